#pragma once
/// \file
/// Lifted proximal operator machines (docs/methods.md §5.5; Li, Fang & Lin 2019) on the
/// Fenchel-coupled lifted objective
/// ~~~{.unparsed}
///   J = l(z_L, y) + sum_k lambda_k [G*(z_k) + G(W_k z_{k-1} + b_k) - <z_k, W_k z_{k-1} + b_k>],
/// ~~~
/// for any activation pair (a softmax output through its negative-entropy conjugate included).
/// z-blocks are updated by LPOM's fixed-point iteration of their optimality condition,
/// ~~~{.unparsed}
///   z_k = f(a_k - (lambda_{k+1}/lambda_k) W_{k+1}^T (f(a_{k+1}) - z_{k+1})),
/// ~~~
/// which converges where the map contracts (roughly (lambda_{k+1}/lambda_k) ||W_{k+1}||^2
/// max f'^2 < 1); per sample, an update that would raise J is replaced by a proximal-gradient
/// step, and step_report::safeguarded says how often that happened (methods/lifted.hpp).
/// W-blocks by gradient steps with backtracking, independent across layers. Training:
/// `train_step` (the native block coordinate descent) or `gradient`, the estimate
/// lambda_k d_theta E_k at the z-minimiser, which tends to BP's gradient as every
/// lambda -> infinity.
///
/// Paper: J. Li, C. Fang, Z. Lin, "Lifted Proximal Operator Machines", AAAI 2019
/// (arXiv:1811.01501).

#include "lifted_method.hpp"

namespace bilevel {

/// Lifted proximal operator machines (docs/methods.md §5.5); a StepMethod and a GradientMethod.
template <Scalar S>
class lpom : public detail::lifted_method<S> {
 public:
  lpom() : lpom(lifted_settings<S>{}) {}
  explicit lpom(lifted_settings<S> config)
      : detail::lifted_method<S>(std::move(config), "lpom", detail::block_update::fixed_point) {}
};

}  // namespace bilevel
