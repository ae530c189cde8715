#pragma once
/// \file
/// The step sizes the block-descent methods share. On their weight blocks (LPOM and FLN's
/// W-steps, MAC's W-steps): Armijo backtracking along the negative gradient of a block's
/// objective, the step halved after every refusal. Taking only accepted steps, a block descent
/// never increases its objective, the invariant their tests check (docs/methods.md §5.5-§5.6).
/// On the z-blocks of the lifted solvers (CHL, LPOM's safeguard, FLN): how far the step grows
/// after an accepted proximal-gradient trial.

#include <algorithm>

#include "../core/types.hpp"

namespace bilevel::detail {

/// How a line search ended: whether a step was accepted, and how many steps were tried.
struct line_search_result {
  bool accepted = false;
  Index tries = 0;
};

/// Tries t = step, step / 2, ... (at most `tries` values): `move(t)` sets the block's variables
/// to x - t g, and t is accepted once `value()` <= before - armijo t ||g||^2 (`squared` is
/// ||g||^2, `before` the objective at x). On return `step` is the accepted t, or half the last
/// refused one; the caller restores x when nothing was accepted.
template <Scalar S, class Move, class Value>
line_search_result armijo_backtracking(S& step, S before, S squared, S armijo, Index tries,
                                       Move&& move, Value&& value) {
  for (Index tried = 1; tried <= tries; ++tried) {
    move(step);
    if (value() <= before - armijo * step * squared) return {true, tried};
    step /= S(2);
  }
  return {false, tries};
}

/// The step to try next after a proximal-gradient trial at `step` was accepted by the test
/// `curvature` <= ||dz||^2 / step (docs/methods.md §5.5), given `squared` = ||dz||^2 and the test's
/// left side of that trial (twice the Bregman divergence D_h(z+, z), or <dq, dz> next to the loss
/// and above pairs without a closed-form D_G): squared / curvature is the largest step the test
/// would have accepted along that move. The step grows to 0.8 of it, but by a factor between 1 and
/// 1.5 (1.5 where the move showed no curvature). Growing 1.5x blindly had every second or third
/// trial refused, a product each, on the paper's MLP; never shrinking after an accepted trial keeps
/// rounding in a converged block's tiny moves from driving the step down.
template <Scalar S>
S grown_step(S step, S squared, S curvature) {
  const S grown = S(1.5) * step;
  if (!(curvature > 0)) return grown;
  return std::clamp(S(0.8) * squared / curvature, step, grown);
}

}  // namespace bilevel::detail
