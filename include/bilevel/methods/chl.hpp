#pragma once
/// \file
/// Layered contrastive Hebbian learning (docs/methods.md §5.3; Xie & Seung 2003, as unravelled
/// bottom-up in Zach 2021, Prop. 4). Free energy E(z) = sum_k c_k E_k(z_k, z_{k-1}) under the
/// Fenchel coupling with c_k = gamma^(k-1); the clamped energy adds c_{L+1} l(z_L) with
/// c_{L+1} = gamma^(L-1) beta. The free phase is the forward pass (every E_k is 0 there); the
/// clamped phase is solved by block coordinate descent over the layers, each block convex.
/// Layer k's gradient is d_theta E_k(z^beta) / (gamma^(L-k) beta) (the free term is 0), which
/// tends to BP's gradient, direction and norm, as beta -> 0 at any fixed gamma.
///
/// Papers: X. Xie, H. S. Seung, "Equivalence of Backpropagation and Contrastive Hebbian Learning in
/// a Layered Network", Neural Computation 15(2), 2003; C. Zach, arXiv:2105.07231 (2021), Prop. 4.

#include <cmath>
#include <string>

#include "../core/error.hpp"
#include "lifted.hpp"
#include "method.hpp"
#include "stopping_rule.hpp"

namespace bilevel {

/// Layered contrastive Hebbian learning (docs/methods.md §5.3); a GradientMethod.
template <Scalar S>
class chl {
 public:
  struct settings {
    S beta = S(1);              ///< spacing at the loss (per sample)
    S gamma = S(1);             ///< feedback discount; 1 makes the clamped problem easiest
    /// The clamped phase: the stopping rule's tolerance (relative to each layer's displacement
    /// z^beta - z^0, per sample; docs/methods.md §5.6b) and the cap on sweeps. Most samples
    /// need 50-150 sweeps; on trained weights a few converge slowly, and 400 left 0.04% of
    /// MNIST's at the cap in the second epoch of training.
    stopping_settings<S> stopping{S(1e-3), 2000};
    Index block_iterations = 1;  ///< proximal-gradient steps per block and sweep
    /// The cap on the extrapolation factor between sweeps (accelerated block coordinate
    /// descent, docs/methods.md §5.6b; 0: plain sweeps).
    S extrapolation = S(0.95);
    /// The forward pass (default: CHL's locality), or the first-order start of §5.6b.
    inner_start start = inner_start::forward;
  };

  chl() : chl(settings{}) {}
  explicit chl(settings config) : config_(config) {
    detail::require_positive_finite("chl", "beta", config.beta);
    detail::require_positive_finite("chl", "gamma", config.gamma);
    config.stopping.validate("chl");
    detail::require(config.block_iterations >= 1, "chl", "block_iterations", ">= 1",
                    config.block_iterations);
    detail::require(config.extrapolation >= 0 && config.extrapolation < 1, "chl",
                    "extrapolation", "in [0, 1)", config.extrapolation);
  }

  std::string name() const { return "chl"; }
  const settings& config() const { return config_; }

  /// The solver's step sizes persist across batches (they start where the last batch ended).
  void save_state(state_writer& out) const {
    out.write_text(name());
    objective_.save_step_sizes(out);
  }
  void load_state(state_reader& in) {
    in.expect_text(name(), "method");
    objective_.load_step_sizes(in);
  }

  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    detail::require_batch<Program, S>(net, x, y, "chl::gradient");
    const Index L = net.depth();
    weights_.lambda.resize(std::size_t(L));
    for (Index k = 0; k < L; ++k) weights_.lambda[std::size_t(k)] = std::pow(config_.gamma, S(k));
    weights_.loss_weight = std::pow(config_.gamma, S(L - 1)) * config_.beta;
    weights_.output_lifted = true;

    objective_.start(net, x, y, weights_, config_.start);
    step_report report;
    report.loss = detail::mean_loss<Program, S>(net, objective_.forward().z.back(), y, losses_);
    report.correct = count_correct<S>(objective_.forward().z.back(), y);
    const detail::lifted_solve solved =
        objective_.solve(net, y, weights_, config_.stopping,
                         detail::block_update::proximal_gradient, config_.block_iterations,
                         config_.extrapolation);
    report.inner_iterations = solved.sweeps;
    report.unconverged = solved.unconverged;
    report.inner_residual = objective_.residual(net, y, weights_);
    report.inner_energy = double(objective_.value(net, y, weights_).mean());
    // d_theta E_k(z^beta) c_k / c_{L+1}: the lifted objective's gradient divided by its loss
    // weight.
    objective_.parameter_gradient(net, y, weights_, gradient);
    return report;
  }

  /// The clamped state z^beta of the last batch (z_0 .. z_L).
  const std::vector<Matrix<S>>& clamped_state() const { return objective_.z(); }

 private:
  settings config_;
  detail::lifted_objective<S> objective_;
  detail::lifted_weights<S> weights_;
  RowVector<S> losses_;  ///< per-sample losses of the forward pass
};

}  // namespace bilevel
