#pragma once
/// \file
/// The line search the block-descent methods share on their weight blocks (LPOM and FLN's
/// W-steps, MAC's W-steps): Armijo backtracking along the negative gradient of a block's
/// objective, the step halved after every refusal. Taking only accepted steps, a block descent
/// never increases its objective, the invariant their tests check (docs/methods.md §5.5-§5.6).

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

}  // namespace bilevel::detail
