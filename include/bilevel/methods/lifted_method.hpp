#pragma once
/// \file
/// What LPOM and FLN share (docs/methods.md §5.5): the lifted objective
/// ~~~{.unparsed}
///   J = l(z_L, y) + sum_k lambda_k [G*(z_k) + G(W_k z_{k-1} + b_k) - <z_k, W_k z_{k-1} + b_k>]
/// ~~~
/// (with an unlifted output, z_L = f_L(a_L) and the loss is the true loss), its z-blocks solved
/// by block coordinate descent to the stopping rule of methods/stopping_rule.hpp, then either the
/// gradient estimate lambda_k d_theta E_k at the z-minimiser (any optimizer; it tends to BP's
/// gradient as every lambda -> infinity) or the native step: gradient steps with backtracking on
/// every W-block, independent across layers. The two methods differ in their z-block solver
/// (methods/lifted.hpp): LPOM's fixed-point iteration, FLN's proximal gradient.

#include <string>
#include <vector>

#include "../core/error.hpp"
#include "lifted.hpp"
#include "method.hpp"
#include "stopping_rule.hpp"

namespace bilevel {

/// Settings shared by LPOM and FLN, which minimise the same objective with different solvers.
template <Scalar S>
struct lifted_settings {
  std::vector<S> lambda = {S(1)};  ///< one multiplier for every layer, or one per layer
  /// The z-solve: the stopping rule's tolerance and the cap on sweeps (top block first). As
  /// training grows ||W||, LPOM's safeguarded fixed point slows down (docs/methods.md §5.5):
  /// a cap of 200 left 54% of MNIST's samples unconverged in the second epoch, 1000 left 0.04%.
  stopping_settings<S> stopping{S(1e-3), 2000};
  /// Updates per block and sweep (fewer where the stopping rule already holds for the block).
  Index block_iterations = 1;
  /// The cap on the extrapolation factor between sweeps (accelerated block coordinate descent,
  /// docs/methods.md §5.6b; 0: plain sweeps).
  S extrapolation = S(0.95);
  /// Where the z-solve starts: the first-order start of docs/methods.md §5.6b by default.
  inner_start start = inner_start::first_order;
  /// z_L a variable coupled to a_L by lambda_L (LPOM), or the output f_L(a_L) on the true loss
  /// (FLN, §5.5).
  bool output_lifted = true;
  Index weight_iterations = 5;     ///< gradient steps per W-block in train_step
  S weight_tolerance = S(1e-6);    ///< a W-block stops when its gradient norm is below

  void validate(const char* method) const {
    detail::require(!lambda.empty(), method, "lambda", "one value or one per layer", "empty");
    for (const S value : lambda) detail::require_positive_finite(method, "lambda", value);
    stopping.validate(method);
    detail::require(block_iterations >= 1, method, "block_iterations", ">= 1", block_iterations);
    detail::require(extrapolation >= 0 && extrapolation < 1, method, "extrapolation", "in [0, 1)",
                    extrapolation);
    detail::require(weight_iterations >= 0, method, "weight_iterations", ">= 0",
                    weight_iterations);
    detail::require(weight_tolerance >= 0, method, "weight_tolerance", ">= 0", weight_tolerance);
  }
};

namespace detail {

/// The shared skeleton of LPOM and FLN: z from the forward pass (or a first-order start),
/// sweeps over the blocks by `update`, then the gradient estimate or native W-steps.
template <Scalar S>
class lifted_method {
 public:
  lifted_method(lifted_settings<S> config, const char* name, block_update update)
      : config_(std::move(config)),
        name_(name),
        entry_point_(concat(name, "::gradient")),
        update_(update) {
    config_.validate(name);
  }

  std::string name() const { return name_; }
  const lifted_settings<S>& config() const { return config_; }

  /// The solver's step sizes persist across batches (they start where the last batch ended).
  void save_state(state_writer& out) const {
    out.write_text(name());
    objective_.save_step_sizes(out);
  }
  void load_state(state_reader& in) {
    in.expect_text(name(), "method");
    objective_.load_step_sizes(in);
  }

  /// The estimate d_theta J at the inferred z (batch means), for any optimizer.
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    const step_report report = infer(net, x, y);
    objective_.parameter_gradient(net, y, weights_, gradient);
    return report;
  }

  /// The native step: z-blocks, then each W-block by gradient steps with backtracking
  /// (independent across layers).
  template <class Program>
  step_report train_step(Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y) {
    return train_step(net, x, y, whole_batch{});
  }

  /// The same step on this process's part of a batch split over several: the z-blocks are
  /// solved locally, the W-blocks' gradients and objective values are averaged over the whole
  /// batch by `shards` (methods/batch_reduction.hpp), so every process takes the same W-steps.
  template <class Program, BatchReduction<S> Reduction>
  step_report train_step(Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                         const Reduction& shards) {
    const step_report report = infer(net, x, y);
    for (Index k = 0; k < net.depth(); ++k)
      objective_.descend_weights(net, y, weights_, k, config_.weight_iterations,
                                 config_.weight_tolerance, shards);
    return report;
  }

  /// J's minimiser over z of the last batch (z_0 .. z_L).
  const std::vector<Matrix<S>>& state() const { return objective_.z(); }

 private:
  template <class Program>
  step_report infer(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y) {
    require_batch<Program, S>(net, x, y, entry_point_);
    const Index L = net.depth();
    require_per_layer(config_.lambda.size(), L, name_, "the number of lambdas");
    weights_.lambda.resize(std::size_t(L));
    for (Index k = 0; k < L; ++k)
      weights_.lambda[std::size_t(k)] =
          config_.lambda.size() == 1 ? config_.lambda.front() : config_.lambda[std::size_t(k)];
    weights_.loss_weight = 1;
    weights_.output_lifted = config_.output_lifted;

    objective_.start(net, x, y, weights_, config_.start);
    step_report report;
    report.loss = mean_loss<Program, S>(net, objective_.forward().z.back(), y, losses_);
    report.correct = count_correct<S>(objective_.forward().z.back(), y);
    const lifted_solve solved =
        objective_.solve(net, y, weights_, config_.stopping, update_, config_.block_iterations,
                         config_.extrapolation);
    report.inner_iterations = solved.sweeps;
    report.unconverged = solved.unconverged;
    report.safeguarded = solved.safeguarded;
    report.inner_residual = objective_.residual(net, y, weights_);
    report.inner_energy = double(objective_.value(net, y, weights_).mean());
    return report;
  }

  lifted_settings<S> config_;
  std::string name_;
  std::string entry_point_;  ///< "lpom::gradient" or "fln::gradient", for error messages
  block_update update_;
  lifted_objective<S> objective_;
  lifted_weights<S> weights_;
  RowVector<S> losses_;  ///< per-sample losses of the forward pass
};

}  // namespace detail
}  // namespace bilevel
