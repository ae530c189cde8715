#pragma once
/// \file
/// Fenchel lifted networks (METHODS.md §5.5; Gu, Askari & El Ghaoui 2020): the lifted objective
/// of LPOM (see lpom.hpp), its lambda_k fixed per layer as hyperparameters (Lagrange
/// multipliers of a relaxation that lower-bounds the training problem), with every block solved
/// to a tolerance as the convex problem it is: z-blocks by proximal gradient (for ReLU a
/// non-negative least-squares-type problem, solved by projected gradient), the last layer on
/// the true loss, and W-blocks by gradient descent with backtracking.
///
/// The objective, per sample (METHODS.md §5.5), with a_k = W_k z_{k-1} + b_k:
/// ~~~{.unparsed}
///   J = l(z_L, y) + sum_k lambda_k [G*(z_k) + G(a_k) - <z_k, a_k>]
/// ~~~
///
/// Paper: F. Gu, A. Askari, L. El Ghaoui, "Fenchel Lifted Networks: A Lagrange Relaxation of Neural
/// Network Training", AISTATS 2020 (arXiv:1811.08039).

#include <string>

#include "lpom.hpp"

namespace bilevel {

/// Fenchel lifted networks (METHODS.md §5.5); a StepMethod and a GradientMethod.
template <Scalar S>
class fln : public detail::lifted_method<S, fln<S>> {
 public:
  /// FLN's defaults solve blocks further than LPOM's: 20 steps per block, W-blocks 20 steps.
  static lifted_settings<S> default_settings() {
    lifted_settings<S> config;
    config.block_iterations = 20;
    config.weight_iterations = 20;
    return config;
  }

  fln() : fln(default_settings()) {}
  explicit fln(lifted_settings<S> config)
      : detail::lifted_method<S, fln<S>>(std::move(config), "fln") {}

  /// Block m solved as a convex problem, by proximal gradient to the block tolerance.
  template <class Program>
  void update_block(detail::lifted_objective<S>& objective, const Program& net,
                    const MatrixCRef<S>& y, const detail::lifted_weights<S>& weights, Index m) {
    objective.solve_block(net, y, weights, m, this->config_.block_iterations,
                          this->config_.block_tolerance);
  }
};

}  // namespace bilevel
