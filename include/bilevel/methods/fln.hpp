#pragma once
/// \file
/// Fenchel lifted networks (docs/methods.md §5.5; Gu, Askari & El Ghaoui 2020): the lifted
/// objective of LPOM (lifted_method.hpp) with the last layer on the true loss, its lambda_k fixed
/// per layer as hyperparameters (Lagrange multipliers of a relaxation that lower-bounds the
/// training problem), every block the convex problem it is: z-blocks by proximal-gradient steps
/// (for ReLU a non-negative least-squares-type problem, projected gradient), swept top down
/// until the stopping rule holds for every block, W-blocks by gradient descent with
/// backtracking.
///
/// The objective, per sample (§5.5), with a_k = W_k z_{k-1} + b_k:
/// ~~~{.unparsed}
///   J = l(f_L(a_L), y) + sum_{k<L} lambda_k [G*(z_k) + G(a_k) - <z_k, a_k>]
/// ~~~
/// (`output_lifted` = true gives LPOM's objective, with z_L a variable, for comparisons).
///
/// Paper: F. Gu, A. Askari, L. El Ghaoui, "Fenchel Lifted Networks: A Lagrange Relaxation of Neural
/// Network Training", AISTATS 2020 (arXiv:1811.08039).

#include "lifted_method.hpp"

namespace bilevel {

/// Fenchel lifted networks (docs/methods.md §5.5); a StepMethod and a GradientMethod.
template <Scalar S>
class fln : public detail::lifted_method<S> {
 public:
  /// FLN's defaults: the output on the true loss, one proximal-gradient step per z-block and
  /// sweep, W-blocks 20 steps. The sweeps go on until the stopping rule holds for every block,
  /// so the solve ends at the same tolerance either way; solving each block to the rule within
  /// every sweep (up to 20 steps, the default before) took more sweeps, not fewer (103 against
  /// 77 at lambda 10 from the first-order start) and 2.7x the time (README, "Results: speed").
  static lifted_settings<S> default_settings() {
    lifted_settings<S> config;
    config.output_lifted = false;
    config.weight_iterations = 20;
    return config;
  }

  fln() : fln(default_settings()) {}
  explicit fln(lifted_settings<S> config)
      : detail::lifted_method<S>(std::move(config), "fln",
                                 detail::block_update::proximal_gradient) {}
};

}  // namespace bilevel
