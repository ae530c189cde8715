#pragma once
/// \file
/// Lifted proximal operator machines (METHODS.md §5.5; Li, Fang & Lin 2019) on the
/// Fenchel-coupled lifted objective
/// ~~~{.unparsed}
///   J = l(z_L, y) + sum_k lambda_k [G*(z_k) + G(W_k z_{k-1} + b_k) - <z_k, W_k z_{k-1} + b_k>],
/// ~~~
/// for any activation pair (a softmax output through its negative-entropy conjugate included).
/// z-blocks are updated by LPOM's fixed-point iteration of their optimality condition,
/// ~~~{.unparsed}
///   z_k = f(a_k - (lambda_{k+1}/lambda_k) W_{k+1}^T (f(a_{k+1}) - z_{k+1})),
/// ~~~
/// safeguarded so that J never increases; W-blocks by a few gradient steps with backtracking,
/// independent across layers. Training: `train_step` (the native block coordinate descent) or
/// `gradient`, the estimate lambda_k d_theta E_k at the z-minimiser, which tends to BP's gradient
/// as every lambda -> infinity.
///
/// Paper: J. Li, C. Fang, Z. Lin, "Lifted Proximal Operator Machines", AAAI 2019
/// (arXiv:1811.01501).

#include <string>
#include <vector>

#include "../core/error.hpp"
#include "lifted.hpp"
#include "method.hpp"

namespace bilevel {

/// Settings shared by LPOM and FLN, which minimise the same objective with different solvers.
template <Scalar S>
struct lifted_settings {
  std::vector<S> lambda = {S(1)};  ///< one multiplier for every layer, or one per layer
  Index sweeps = 5;                ///< z-block sweeps per batch (top layer first)
  Index block_iterations = 5;      ///< fixed-point (LPOM) or proximal-gradient (FLN) steps per block
  S block_tolerance = S(1e-5);     ///< FLN: a block is solved when its gradient mapping is below
  Index weight_iterations = 5;     ///< gradient steps per W-block in train_step
  S weight_tolerance = S(1e-6);    ///< a W-block stops when its gradient norm is below

  void validate(const char* method) const {
    detail::require(!lambda.empty(), method, "lambda", "one value or one per layer", "empty");
    for (const S value : lambda) detail::require_positive_finite(method, "lambda", value);
    detail::require(sweeps >= 1, method, "sweeps", ">= 1", sweeps);
    detail::require(block_iterations >= 1, method, "block_iterations", ">= 1", block_iterations);
    detail::require(block_tolerance >= 0, method, "block_tolerance", ">= 0", block_tolerance);
    detail::require(weight_iterations >= 0, method, "weight_iterations", ">= 0",
                    weight_iterations);
    detail::require(weight_tolerance >= 0, method, "weight_tolerance", ">= 0", weight_tolerance);
  }
};

namespace detail {

/// The shared skeleton of LPOM and FLN (CRTP): z from the forward pass, sweeps over the blocks
/// by the derived method's `update_block`, then the gradient estimate or native W-steps.
template <Scalar S, class Derived>
class lifted_method {
 public:
  lifted_method(lifted_settings<S> config, const char* name)
      : config_(std::move(config)), name_(name), entry_point_(concat(name, "::gradient")) {
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

  /// The estimate lambda_k d_theta E_k at the inferred z (batch means), for any optimizer.
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    const step_report report = infer(net, x, y);
    objective_.parameter_gradient(net, weights_.lambda, gradient);
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
      objective_.descend_weights(net, weights_, k, config_.weight_iterations,
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

    objective_.start_from_forward(net, x);
    step_report report;
    report.loss = mean_loss<Program, S>(net, objective_.z().back(), y, losses_);
    report.correct = count_correct<S>(objective_.z().back(), y);
    for (Index sweep = 0; sweep < config_.sweeps; ++sweep)
      for (Index m = L; m >= 1; --m)
        static_cast<Derived&>(*this).update_block(objective_, net, y, weights_, m);
    report.inner_iterations = config_.sweeps;
    report.inner_residual = objective_.residual(net, y, weights_);
    report.inner_energy = double(objective_.value(net, y, weights_).mean());
    return report;
  }

 protected:
  lifted_settings<S> config_;

 private:
  std::string name_;
  std::string entry_point_;  ///< "lpom::gradient" or "fln::gradient", for error messages
  lifted_objective<S> objective_;
  lifted_weights<S> weights_;
  RowVector<S> losses_;  ///< per-sample losses of the forward pass
};

}  // namespace detail

/// Lifted proximal operator machines (METHODS.md §5.5); a StepMethod and a GradientMethod.
template <Scalar S>
class lpom : public detail::lifted_method<S, lpom<S>> {
 public:
  lpom() : lpom(lifted_settings<S>{}) {}
  explicit lpom(lifted_settings<S> config)
      : detail::lifted_method<S, lpom<S>>(std::move(config), "lpom") {}

  /// LPOM's fixed-point iteration on block m.
  template <class Program>
  void update_block(detail::lifted_objective<S>& objective, const Program& net,
                    const MatrixCRef<S>& y, const detail::lifted_weights<S>& weights, Index m) {
    objective.fixed_point_block(net, y, weights, m, this->config_.block_iterations);
  }
};

}  // namespace bilevel
