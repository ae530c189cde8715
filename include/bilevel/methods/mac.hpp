#pragma once
/// \file
/// Method of auxiliary coordinates (MAC; Carreira-Perpinan & Wang 2014), docs/methods.md §5.4.
///
/// Objective, per sample (docs/methods.md §1: energies are per sample, never divided by the batch):
/// ~~~{.unparsed}
///   F(z, theta) = l(f_L(W_L z_{L-1} + b_L), y) + sum_{k<L} mu/2 ||z_k - f_k(W_k z_{k-1} + b_k)||^2,
/// ~~~
/// z_0 = x. The hidden z_1..z_{L-1} are the auxiliary coordinates; the output is not a free
/// variable: the loss term is the program's own loss on the top layer's activation, exactly as in
/// the forward pass (softmax cross-entropy on identity logits, or MSE through any output pair).
/// One penalty weight mu is shared by every hidden layer.
///
/// Notation: eps_k = z_k - f(a_k) (k < L), and one pre-activation signal per layer
/// ~~~{.unparsed}
///   s_k = mu J_f(a_k)^T (f(a_k) - z_k)  (k < L),     s_L = J_{f_L}(a_L)^T dl/dz_L,
/// ~~~
/// so that dF/dz_k = mu eps_k + W_{k+1}^T s_{k+1} (hidden k) and dF/dW_k = s_k z_{k-1}^T. F is
/// held in displacement form, d = z - z^0 from the forward pass z^0 (couplings/penalizer_energy.hpp,
/// w = mu and c = 1; docs/methods.md §5.6b).
///
/// One training step (train_step, StepMethod):
/// ~~~{.unparsed}
///   Z-step  minimise F over all hidden z for fixed theta, per sample, from the forward pass (or
///           the first-order start of §5.6b, an option), by Gauss-Newton steps on the penalties:
///           p = -P^{-1} dF/dz with P = mu (I - N)^T (I - N) the penalties' Hessian on the current
///           linear pieces of f (one substitution down and one up through the hidden layers, the
///           cost of about two matrix products per layer; penalizer_energy.hpp). The loss's
///           curvature is left out of P, so the step is Newton's up to O(1/mu): a few steps at
///           mu >= 10 on smooth pairs. Sample j moves to d + t_j p only if
///           F^j(new) <= F^j + armijo t_j <dF^j/dz, p> (Armijo), so F never increases, sample by
///           sample, beyond its rounding (F^j is evaluated anew after samples retire: see
///           try_steps); t_j starts at 1 and is halved whenever the step is refused, and never grows
///           again: at the kinks of piecewise-linear pairs (ReLU) a minimiser often sits on a
///           kink, where full steps bounce from one linear piece to the other and only shrinking
///           steps converge. A refused sample waits for the next iteration (one evaluation per
///           iteration for the whole batch); after max_backtracks refusals in a row it is stuck.
///           Each sample stops when §5.6b's rule holds for every hidden layer (stopping_rule.hpp:
///           its distance to the minimiser, estimated from the ratio of successive steps, at most
///           tolerance times its displacement ||z_k - z^0_k||) and then stays where it is; the
///           Z-step ends when every sample has stopped or at the cap, and the report counts the
///           samples that did not converge (at the cap, or stuck).
///   W-step  every layer is an independent problem (they only read the z of the Z-step, so they
///           can run in parallel; each layer has its own buffers):
///             layer k < L:  min over (W_k, b_k) of mean_j 1/2 ||z_k^j - f(W_k z_{k-1}^j + b_k)||^2,
///             layer L:      min over (W_L, b_L) of mean_j l(f(W_L z_{L-1}^j + b_L), y^j).
///           mu_k multiplies layer k's part of F by a constant, so it is dropped from its W-step
///           (same minimiser, same monotonicity, step sizes independent of mu). Each layer takes
///           w_iterations gradient steps, each with an Armijo backtracking line search on the
///           layer's batch-mean objective, so no layer objective (hence F at fixed z and mu) ever
///           increases. A layer's first trial step is its own step size, which starts at w_step
///           (the learning rate, also its upper bound), is halved while Armijo fails and doubled
///           (up to w_step) after a step accepted at the first trial; it persists across calls.
///   mu      after each train_step mu <- min(mu * mu_growth, mu_max), i.e. mu = mu0 growth^t after
///           t steps; set_mu() sets it directly (for example once per epoch). gradient() and the
///           building blocks below never change mu.
/// ~~~
///
/// Why Gauss-Newton and not plain gradient steps: the rule of §5.6b reads the distance to the
/// minimiser off the ratio of successive steps, which is sound only for steps that shrink
/// geometrically. Gradient descent with Barzilai-Borwein steps (this method's earlier solver)
/// does not: measured on the paper's MLP (784-256-128-64-10 ReLU, 50 MNIST images), its steps
/// stopped by the rule left errors of 20-100 times the tolerance in most layers at every
/// spacing. With Gauss-Newton steps the measured error is within the tolerance at mu >= 100 and
/// within 3-7 times it in 5-10% of the layers at mu = 1 and 10 (the ReLU kinks).
///
/// The MAC paper runs the quadratic-penalty method on the whole training set with coordinates
/// kept per training sample, increasing mu along a schedule over the MAC iterations; its Z-step
/// separates into one small problem per training point and its W-step reuses existing
/// single-layer solvers. Here training is by minibatches, which are reshuffled, so a batch's
/// coordinates start from its forward pass at every step (no per-sample memory). The defaults are
/// ours, not the paper's: mu0 = 1, growth 1 (constant; pick growth = (factor per epoch)^(1 /
/// batches per epoch), or call set_mu once per epoch), Z-step tolerance 1e-4 with a cap of 1000
/// iterations, cold start, 5 W iterations per layer, w_step 0.5, Armijo constant 1e-4. Any
/// per-point solver that does not increase F fits the method. The first-order start is off by
/// default because it buys nothing here: from the forward pass, the first Gauss-Newton step is
/// that start with f linearised.
///
/// As a gradient estimate (gradient(), GradientMethod): after the Z-step, the batch mean of
/// dF/dW_k at the minimiser z*, i.e. dW_k = s_k `z_{k-1}^{*T}` / B, db_k = sum_cols(s_k) / B:
/// mu d_W E_k for hidden layers and dl/dW_L at z*_{L-1} for the top layer. By the envelope
/// theorem it is the gradient of the value function V_mu(theta) = mean_j min_z F^j(z, theta)
/// (near a nondegenerate local minimiser z*), which lies below the forward-pass loss and tends to
/// it as mu -> infinity; the estimate tends to BP's gradient with an error O(1/mu) (§5.4) down
/// to the floor the tolerance leaves (§5.6b).
///
/// Paper: M. Carreira-Perpinan, W. Wang, "Distributed Optimization of Deeply Nested Systems",
/// AISTATS 2014 (arXiv:1212.5921).

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/finite.hpp"
#include "../program.hpp"
#include "active_set.hpp"
#include "batch_reduction.hpp"
#include "descent.hpp"
#include "method.hpp"
#include "../couplings/penalizer_energy.hpp"
#include "stopping_rule.hpp"

namespace bilevel {

/// Method of auxiliary coordinates (docs/methods.md §5.4); a StepMethod and a GradientMethod.
template <Scalar S>
class mac {
 public:
  struct settings {
    /// mu0: the penalty weight of every hidden layer at the start.
    S mu = S(1);
    /// Factor applied to mu after every train_step (1: constant), and its cap.
    S mu_growth = S(1);
    S mu_max = std::numeric_limits<S>::infinity();
    /// Z-step: the stopping rule of docs/methods.md §5.6b (tolerance, cap on descent steps).
    stopping_settings<S> z_stopping = {S(1e-4), 1000};
    /// Where the Z-step starts: the forward pass, or the first-order start of §5.6b (one
    /// backward pass of BP).
    inner_start start = inner_start::forward;
    /// W-step: gradient steps per layer, and the largest (and first) trial step.
    Index w_iterations = 5;
    S w_step = S(0.5);
    /// Armijo sufficient-decrease constant and the number of halvings tried per step.
    S armijo = S(1e-4);
    Index max_backtracks = 40;
  };

  /// Where a Z-step starts: the forward pass of theta, the first-order start of §5.6b, or the
  /// coordinates the previous Z-step ended at (same batch; alternating this way makes F
  /// monotone at fixed mu).
  enum class z_start { forward, first_order, previous };

  mac() : mac(settings{}) {}
  explicit mac(settings config) : settings_(config), mu_(config.mu) {
    constexpr const char* function = "mac";
    detail::require(std::isfinite(config.mu) && config.mu > 0, function, "mu", "finite and > 0",
                    config.mu);
    detail::require(std::isfinite(config.mu_growth) && config.mu_growth >= 1, function,
                    "mu_growth", "finite and >= 1", config.mu_growth);
    detail::require(!std::isnan(config.mu_max) && config.mu_max >= config.mu, function, "mu_max",
                    detail::parts(">= mu (", config.mu, ")"), config.mu_max);
    config.z_stopping.validate(function);
    detail::require(config.w_iterations >= 0, function, "w_iterations", ">= 0",
                    config.w_iterations);
    detail::require(std::isfinite(config.w_step) && config.w_step > 0, function, "w_step",
                    "finite and > 0", config.w_step);
    detail::require(config.armijo > 0 && config.armijo < 1, function, "armijo", "in (0, 1)",
                    config.armijo);
    detail::require(config.max_backtracks >= 1, function, "max_backtracks", ">= 1",
                    config.max_backtracks);
  }

  std::string name() const { return "mac"; }
  const settings& config() const { return settings_; }

  /// The current penalty weight of every hidden layer.
  S mu() const { return mu_; }
  void set_mu(S mu) {
    detail::require(std::isfinite(mu) && mu > 0, "mac::set_mu", "mu", "finite and > 0", mu);
    mu_ = mu;
  }
  /// The current mu (its schedule's position) and each W-step's first trial step size.
  void save_state(state_writer& out) const {
    out.write_text(name());
    out.write_f64(double(mu_));
    Vector<S> steps(Index(layers_.size()));
    for (std::size_t k = 0; k < layers_.size(); ++k) steps[Index(k)] = layers_[k].step;
    out.write_values<S>(steps);
  }
  void load_state(state_reader& in) {
    in.expect_text(name(), "method");
    const double mu = in.read_f64("mac mu");
    if (!(std::isfinite(mu) && mu > 0)) in.fail("mac mu", "finite and > 0", mu);
    const Vector<S> steps = in.read_values<S>("mac W-step sizes");
    if (!(all_finite(steps) && (steps.array() >= S(0)).all()))
      in.fail("mac W-step sizes", "finite and >= 0", "a negative, NaN or Inf entry");
    mu_ = S(mu);
    layers_.assign(std::size_t(steps.size()), layer_work{});
    for (std::size_t k = 0; k < layers_.size(); ++k) layers_[k].step = steps[Index(k)];
  }

  /// mu <- min(mu * mu_growth, mu_max); train_step calls this once at its end.
  void advance_mu() { mu_ = std::min(mu_ * settings_.mu_growth, settings_.mu_max); }

  /// One MAC iteration on a batch: Z-step (from the start the settings choose), W-step, then
  /// advance_mu(). The report's loss and correct count are those of the forward pass;
  /// inner_iterations counts the Z-step's descent steps, inner_energy is the batch mean of F
  /// after the Z-step, inner_residual the batch mean of the per-sample norm of dF/dz there, and
  /// unconverged the samples the Z-step left before the stopping rule held.
  template <class Program>
  step_report train_step(Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y) {
    return train_step(net, x, y, whole_batch{});
  }

  /// The same step on this process's part of a batch split over several: the Z-step is local
  /// (per sample), the W-step's gradients and line-search values are averaged over the whole
  /// batch by `shards` (methods/batch_reduction.hpp), so every process takes the same W-step.
  template <class Program, BatchReduction<S> Reduction>
  step_report train_step(Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                         const Reduction& shards) {
    const step_report report = solve_z(net, x, y);
    w_step(net, y, shards);
    advance_mu();
    return report;
  }

  /// The batch-mean estimate dF/dtheta at the Z-step's minimiser (see the header comment), in
  /// the program's parameter layout. Reports as train_step does; does not change mu.
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    const step_report report = solve_z(net, x, y);
    if (gradient.size() != net.parameter_count()) gradient.resize(net.parameter_count());
    for (Index i = 0; i < net.depth(); ++i) energy_.layer_estimate(net, now_, z_, i, gradient);
    return report;
  }

  /// The Z-step alone (for fixed theta), from the start the settings choose.
  template <class Program>
  step_report solve_z(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y) {
    return solve_z(net, x, y,
                   settings_.start == inner_start::first_order ? z_start::first_order
                                                               : z_start::forward);
  }

  /// The Z-step alone from `start`. With z_start::previous it continues from the coordinates of
  /// the previous call, which must have had a batch of the same size (the caller passes the
  /// same x). Records the batch-mean F before the first and after every step in
  /// energy_history().
  template <class Program>
  step_report solve_z(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                      z_start start) {
    static_assert(std::is_same_v<typename Program::scalar_type, S>,
                  "mac<S> needs a program over the same scalar type S");
    constexpr const char* function = "mac::solve_z";
    detail::require_batch<Program, S>(net, x, y, function);
    if (start == z_start::previous) {
      detail::require(fits(net, x.cols()), function, "z_start::previous",
                      "a previous Z-step on a batch of the same size and program", "none");
    }
    const auto L = std::size_t(net.depth());
    if (layers_.size() != L) layers_.assign(L, layer_work{});
    energy_.start(net, x, mu_, S(1));
    const auto frozen = energy_.frozen(net);  // the weights stay fixed through the Z-step
    energy_.size(net, now_, true);
    energy_.size(net, trial_, true);
    const auto& forward = energy_.forward();
    step_report report;
    report.loss = detail::mean_loss<Program, S>(net, forward.z.back(), y, losses_);
    report.correct = count_correct<S>(forward.z.back(), y);

    if (start == z_start::previous) {
      for (std::size_t k = 1; k < L; ++k) now_.d[k] = z_[k] - forward.z[k];
    } else if (start == z_start::first_order) {
      energy_.first_order_start(net, y, now_);
    } else {
      energy_.cold_start(now_);
    }
    descend(net, y, report);

    const auto& z = energy_.states(now_);
    z_.resize(L + 1);
    for (std::size_t k = 0; k <= L; ++k) z_[k] = z[k];
    return report;
  }

  /// The W-step alone, on the coordinates of the last Z-step (the same batch's y); `shards`
  /// averages its means over a batch split over several processes.
  template <class Program, BatchReduction<S> Reduction = whole_batch>
  void w_step(Program& net, const MatrixCRef<S>& y, const Reduction& shards = {}) {
    constexpr const char* function = "mac::w_step";
    detail::require(fits(net, y.cols()), function, "the state",
                    "a Z-step on a batch of this size and program first", "none");
    detail::require_shape(function, "y", net.output_size(), z_[0].cols(), y.rows(), y.cols());
    for (Index i = 0; i < net.depth(); ++i) fit_layer(net, i, y, shards);
  }

  /// Batch mean of F at the stored coordinates and the current theta.
  template <class Program>
  double energy(const Program& net, const MatrixCRef<S>& y) {
    return double(energies(net, y).mean());
  }
  /// Per-sample F at the stored coordinates and the current theta, evaluated directly on the
  /// coordinates z (not on their displacements, as the Z-step does).
  template <class Program>
  RowVector<S> energies(const Program& net, const MatrixCRef<S>& y) const {
    detail::require(fits(net, y.cols()), "mac::energies", "the state",
                    "a Z-step on a batch of this size and program first", "none");
    const Index L = net.depth();
    RowVector<S> values = RowVector<S>::Zero(y.cols());
    Matrix<S> a, activation;
    for (Index i = 0; i < L; ++i) {
      const auto u = std::size_t(i);
      net.affine(i, z_[u], a);
      activation.resize(a.rows(), a.cols());
      net.layer(i).visit([&](const auto& pair) { activate<S>(pair, a, activation); });
      if (i + 1 < L)
        values += (mu_ / S(2)) * (z_[u + 1] - activation).colwise().squaredNorm();
      else
        values += net.loss_values(activation, y);
    }
    return values;
  }

  /// The W-step objective of layer index k (0-based) at the stored coordinates: the batch mean
  /// of 1/2 ||z_{k+1} - f(W z_k + b)||^2 for hidden layers (without mu), of the loss for the top.
  template <class Program>
  double layer_objective(const Program& net, Index k, const MatrixCRef<S>& y) {
    detail::require(fits(net, y.cols()), "mac::layer_objective", "the state",
                    "a Z-step on a batch of this size and program first", "none");
    detail::require(k >= 0 && k < net.depth(), "mac::layer_objective", "the layer index",
                    detail::parts("in [0, ", net.depth(), ")"), k);
    return double(layer_value(net, k, y, false));
  }

  /// Batch-mean F before the Z-step's first step and after each of its steps (last Z-step).
  const std::vector<double>& energy_history() const { return history_; }

  /// The coordinates of the last Z-step: z_0 = x, the hidden z_1..z_{L-1}, and the output
  /// z_L = f_L(a_L) they produce (at the theta of that Z-step).
  const std::vector<Matrix<S>>& state() const { return z_; }

 private:
  struct layer_work {
    Matrix<S> a, value, residual, signal, saved_weights;
    Vector<S> saved_bias;
    RowVector<S> losses;  ///< per-sample losses of the top layer
    /// [dW (column-major) | db | objective]: one buffer, which a batch reduction averages in
    /// one call.
    Vector<S> means;
    S step = S(0);  ///< the layer's current first trial step (0: not yet set)

    Index weight_count() const { return saved_weights.size(); }
    ConstMatrixMap<S> weight_gradient() const {
      return {means.data(), saved_weights.rows(), saved_weights.cols()};
    }
    ConstVectorMap<S> bias_gradient() const {
      return {means.data() + weight_count(), saved_bias.size()};
    }
    /// The gradient entries (dW and db) without the objective.
    auto gradient() const { return means.head(means.size() - 1); }
    S objective() const { return means(means.size() - 1); }
  };

  /// Where a sample that has not converged stands in the Z-step.
  enum class progress : char { moving, stuck };

  /// Exchanges samples p and q in every per-sample buffer of the Z-step.
  void swap_samples(Index p, Index q) {
    order_.swap(p, q);
    energy_.swap_samples(p, q, {&now_, &trial_});
    std::swap(progress_[std::size_t(p)], progress_[std::size_t(q)]);
    std::swap(failures_[std::size_t(p)], failures_[std::size_t(q)]);
    std::swap(step_(p), step_(q));
    for (std::size_t k = 1; k < step_norms_.size(); ++k)
      std::swap(step_norms_[k](p), step_norms_[k](q));
  }

  template <class Program>
  bool fits(const Program& net, Index B) const {
    const auto L = std::size_t(net.depth());
    if (z_.size() != L + 1 || z_[0].cols() != B || z_[0].rows() != net.input_size()) return false;
    for (std::size_t k = 1; k <= L; ++k)
      if (z_[k].rows() != net.layer(Index(k - 1)).outputs() || z_[k].cols() != B) return false;
    return true;
  }

  /// The Z-step from now_.d (see the header comment).
  template <class Program>
  void descend(const Program& net, const MatrixCRef<S>& y, step_report& report) {
    const Index L = net.depth(), B = now_.energy.size();
    const std::size_t cap = std::size_t(settings_.z_stopping.max_iterations);
    if (history_.capacity() < cap + 1) history_.reserve(cap + 1);
    history_.clear();
    energy_.evaluate(net, y, now_, true);
    energy_.gauss_newton_direction(net, now_);
    // Active set: a sample that met the rule is retired (it stays where it is); the others are
    // gathered into the leading columns, and F's batch mean is summed in the samples' order.
    order_.start(y);
    history_.push_back(double(order_.mean(now_.energy)));

    Index iterations = 0;
    if (L > 1) {
      rule_.start(L - 1, B, settings_.z_stopping.tolerance);
      progress_.assign(std::size_t(B), progress::moving);
      failures_.assign(std::size_t(B), 0);
      step_.setOnes(B);
      step_norms_.resize(std::size_t(L));
      for (Index k = 1; k < L; ++k)
        step_norms_[std::size_t(k)] = now_.direction[std::size_t(k)].colwise().norm();
      for (RowVector<S>* row : {&displacement_, &rounding_}) row->resize(B);
      Index active = B;
      bool retired = false;
      while (iterations < settings_.z_stopping.max_iterations) {
        try_steps(net, order_.labels(active), retired);
        ++iterations;
        history_.push_back(double(order_.mean(now_.energy)));
        for (Index k = 1; k < L; ++k) {
          const auto u = std::size_t(k);
          displacement_.head(active) = now_.d[u].leftCols(active).colwise().norm();
          rounding_.head(active) = detail::displacement_rounding_scale(
              displacement_.head(active), energy_.spacing(), energy_.base_norm(k).head(active));
          rule_.observe(k - 1, step_norms_[u].head(active), displacement_.head(active),
                        rounding_.head(active));
        }
        if (rule_.end_iteration()) break;
        const Index before = active;
        active = rule_.retire_converged([this](Index p, Index q) { swap_samples(p, q); });
        retired = active < before;
        energy_.set_width(active);
        bool any_moving = false;
        for (Index j = 0; j < active; ++j)
          any_moving = any_moving || progress_[std::size_t(j)] == progress::moving;
        if (!any_moving) break;
      }
      report.unconverged = rule_.unconverged();
      order_.restore([this](Index p, Index q) { swap_samples(p, q); });
      energy_.set_width(B);
    }
    report.inner_iterations = iterations;
    report.inner_energy = history_.back();
    report.inner_residual = double(now_.squared_gradient.cwiseSqrt().mean());
  }

  /// One Z-step iteration: every moving sample j tries d + t_j p along its Gauss-Newton
  /// direction p, t_j = step_(j), and takes it if F^j(trial) <= F^j + armijo t_j <dF/dz, p>
  /// (Armijo). A taken step keeps t_j, which never grows again (see the header comment: around
  /// the kinks of piecewise-linear pairs only shrinking steps converge). A refused one halves t_j
  /// for the next iteration, and the sample
  /// waits (one evaluation per iteration for the whole batch, rather than a batch-wide
  /// evaluation per halving for the few samples that need them); after max_backtracks refusals
  /// in a row it is stuck. step_norms_ gets each layer's last step taken, which the stopping
  /// rule sees again (ratio 1) while a sample waits, and infinity once it is stuck. Runs on the
  /// samples not yet retired (the first energy_.width(); y holds their labels).
  ///
  /// Both sides of the Armijo test are evaluated over the same columns: after samples retired
  /// (`retired`), F at the current state is evaluated again first. A product's rounding depends
  /// on the columns it runs over (which kernel, which panel a column falls in), and near the
  /// minimiser a sample's decrease is that small: on LeNet-5 in float, F of one point evaluated
  /// at two widths differed by up to 2e-6 of itself, and 0.3% of the samples refused every
  /// step down to a step that no longer moved them.
  template <class Program>
  void try_steps(const Program& net, const MatrixCRef<S>& y, bool retired) {
    const Index L = Index(now_.d.size()), B = energy_.width();
    for (Index j = 0; j < B; ++j) {
      if (progress_[std::size_t(j)] != progress::moving) continue;
      for (Index k = 1; k < L; ++k) {
        const auto u = std::size_t(k);
        trial_.d[u].col(j) = now_.d[u].col(j) + step_(j) * now_.direction[u].col(j);
      }
    }
    if (retired) energy_.evaluate(net, y, now_, false);
    energy_.evaluate(net, y, trial_, true);
    energy_.gauss_newton_direction(net, trial_);
    for (Index j = 0; j < B; ++j) {
      auto& state = progress_[std::size_t(j)];
      if (state == progress::stuck) continue;
      if (trial_.energy(j) <= now_.energy(j) + settings_.armijo * step_(j) * now_.slope(j)) {
        for (Index k = 1; k < L; ++k) {
          const auto u = std::size_t(k);
          step_norms_[u](j) = step_(j) * now_.direction[u].col(j).norm();
        }
        now_.take_sample(trial_, j);
        failures_[std::size_t(j)] = 0;
      } else {
        step_(j) /= S(2);
        if (++failures_[std::size_t(j)] > settings_.max_backtracks) {
          state = progress::stuck;
          for (Index k = 1; k < L; ++k)
            step_norms_[std::size_t(k)](j) = std::numeric_limits<S>::infinity();
        }
      }
    }
  }

  /// Layer index i's W-step objective (mean over the samples here) at the current parameters,
  /// and with `with_gradient` its gradient and the objective in the layer's `means`.
  template <class Program>
  S layer_value(const Program& net, Index i, const MatrixCRef<S>& y, bool with_gradient) {
    const auto u = std::size_t(i);
    layer_work& work = layers_[u];
    const Index B = z_[0].cols();
    const bool top = i + 1 == net.depth();
    net.affine(i, z_[u], work.a);
    work.value.resize(work.a.rows(), B);
    work.residual.resize(work.a.rows(), B);
    S value = 0;
    net.layer(i).visit([&](const auto& pair) {
      activate<S>(pair, work.a, work.value);
      if (top) {
        net.loss_values(work.value, y, work.losses);
        value = work.losses.mean();
        if (with_gradient) net.loss().template gradient<S>(work.value, y, work.residual);
      } else {
        work.residual = work.value - z_[u + 1];  // f(a) - z
        value = work.residual.squaredNorm() / (S(2) * S(B));
      }
      if (with_gradient) {
        work.signal.resize(work.a.rows(), B);
        vjp<S>(pair, work.a, work.residual, work.signal);
      }
    });
    if (with_gradient) {
      const auto& layer = net.layer(i);
      const Index weights = layer.weight_count(), biases = layer.bias_size();
      work.means.resize(weights + biases + 1);
      layer.parameter_gradient(
          z_[u], work.signal, S(1) / S(B),
          MatrixMap<S>(work.means.data(), layer.weight_rows(), layer.weight_cols()),
          VectorMap<S>(work.means.data() + weights, biases));
      work.means(weights + biases) = value;
    }
    return value;
  }

  /// w_iterations Armijo gradient steps on layer index i's objective (it never increases).
  /// Every decision depends only on means averaged by `shards`, so all processes agree.
  template <class Program, BatchReduction<S> Reduction>
  void fit_layer(Program& net, Index i, const MatrixCRef<S>& y, const Reduction& shards) {
    layer_work& work = layers_[std::size_t(i)];
    if (!(work.step > 0)) work.step = settings_.w_step;
    work.step = std::min(work.step, settings_.w_step);
    auto weights = net.weights(i);
    auto bias = net.bias(i);
    for (Index iteration = 0; iteration < settings_.w_iterations; ++iteration) {
      work.saved_weights = weights;
      work.saved_bias = bias;
      layer_value(net, i, y, true);
      shards.mean(std::span<S>(work.means.data(), std::size_t(work.means.size())));
      const S value = work.objective();
      const S squared = work.gradient().squaredNorm();
      if (!(squared > 0) || !std::isfinite(value)) break;
      const detail::line_search_result search = detail::armijo_backtracking(
          work.step, value, squared, settings_.armijo, settings_.max_backtracks + 1,
          [&](S t) {
            weights = work.saved_weights - t * work.weight_gradient();
            bias = work.saved_bias - t * work.bias_gradient();
          },
          [&] {
            S trial = layer_value(net, i, y, false);
            shards.mean(std::span<S>(&trial, 1));
            return trial;
          });
      // A step accepted at once may grow, up to w_step.
      if (search.accepted && search.tries == 1)
        work.step = std::min(S(2) * work.step, settings_.w_step);
      if (!search.accepted) {
        weights = work.saved_weights;
        bias = work.saved_bias;
        work.step = settings_.w_step;
        break;
      }
    }
  }

  settings settings_;
  S mu_;
  detail::penalizer_energy<S> energy_;
  typename detail::penalizer_energy<S>::point now_, trial_;
  detail::displacement_rule<S> rule_;
  std::vector<Matrix<S>> z_;
  RowVector<S> losses_, step_, displacement_, rounding_;
  std::vector<RowVector<S>> step_norms_;
  std::vector<progress> progress_;
  detail::sample_order<S> order_;
  std::vector<Index> failures_;
  std::vector<double> history_;
  std::vector<layer_work> layers_;
};

}  // namespace bilevel
