#pragma once
/// \file
/// Method of auxiliary coordinates (MAC; Carreira-Perpinan & Wang 2014), METHODS.md §5.4.
///
/// Objective, per sample (METHODS.md §1: energies are per sample, never divided by the batch):
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
/// so that dF/dz_k = mu eps_k + W_{k+1}^T s_{k+1} (hidden k) and dF/dW_k = s_k z_{k-1}^T.
///
/// One training step (train_step, StepMethod):
/// ~~~{.unparsed}
///   Z-step  minimise F over all hidden z for fixed theta, starting from the forward pass, by
///           gradient descent with a backtracking (Armijo) line search per sample: sample j moves
///           z^j <- z^j - t_j dF^j/dz only if F^j(new) <= F^j - armijo t_j ||dF^j/dz||^2, otherwise
///           t_j is halved and tried again (at most max_backtracks times; a sample that never
///           passes keeps its z). So F never increases, sample by sample. The first trial step
///           is z_step / max(mu, 1) (the penalties' curvature grows like mu); after an accepted
///           step the next trial is the sample's Barzilai-Borwein step s's / s'(g_new - g) where
///           that is positive (otherwise twice the accepted step if it passed at once), which
///           makes plain descent converge in tens of steps instead of thousands. The Z-step stops
///           after z_iterations steps, when every sample's ||dF/dz|| <= z_tolerance, when no
///           sample can descend any more, or after 5 steps in a row that lowered the batch mean
///           of F by no more than its rounding (in double, ||dF/dz|| then ends around
///           1e-8 sqrt(mu) in our tests: a line search on F cannot resolve smaller decreases).
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
/// The MAC paper runs the quadratic-penalty method on the whole training set with coordinates
/// kept per training sample, increasing mu along a schedule over the MAC iterations; its Z-step
/// separates into one small problem per training point and its W-step reuses existing
/// single-layer solvers. Here training is by minibatches, which are reshuffled, so a batch's
/// coordinates start from its forward pass at every step (no per-sample memory). The defaults are
/// ours, not the paper's: mu0 = 1, growth 1 (constant; pick growth = (factor per epoch)^(1 /
/// batches per epoch), or call set_mu once per epoch), 30 Z iterations, tolerance 1e-6, 5 W
/// iterations per layer, w_step 0.5, Armijo constant 1e-4. Any per-point solver that does not
/// increase F fits the method; gradient descent with Armijo and Barzilai-Borwein trial steps is
/// the one used here.
///
/// As a gradient estimate (gradient(), GradientMethod): after the Z-step, the batch mean of
/// dF/dW_k at the minimiser z*, i.e. dW_k = s_k `z_{k-1}^{*T}` / B, db_k = sum_cols(s_k) / B:
/// mu d_W E_k for hidden layers and dl/dW_L at z*_{L-1} for the top layer. By the envelope
/// theorem it is the gradient of the value function V_mu(theta) = mean_j min_z F^j(z, theta)
/// (near a nondegenerate local minimiser z*), which lies below the forward-pass loss and tends to
/// it as mu -> infinity; the estimate tends to BP's gradient with an error O(1/mu) (METHODS.md
/// §5.4), provided the Z-step is solved well below the BP gradient's size (the error it leaves in
/// the estimate is about ||dF/dz|| / curvature, independent of mu).
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
#include "../program.hpp"
#include "batch_reduction.hpp"
#include "method.hpp"

namespace bilevel {

/// Method of auxiliary coordinates (METHODS.md §5.4); a StepMethod and a GradientMethod.
template <Scalar S>
class mac {
 public:
  struct settings {
    /// mu0: the penalty weight of every hidden layer at the start.
    S mu = S(1);
    /// Factor applied to mu after every train_step (1: constant), and its cap.
    S mu_growth = S(1);
    S mu_max = std::numeric_limits<S>::infinity();
    /// Z-step: at most this many descent steps (0: the coordinates stay at the forward pass).
    Index z_iterations = 30;
    /// Z-step: first trial step, in units of 1 / max(mu, 1).
    S z_step = S(1);
    /// Z-step: stop once every sample's ||dF/dz|| (all hidden layers stacked) is at most this.
    S z_tolerance = S(1e-6);
    /// W-step: gradient steps per layer, and the largest (and first) trial step.
    Index w_iterations = 5;
    S w_step = S(0.5);
    /// Armijo sufficient-decrease constant and the number of halvings tried per step.
    S armijo = S(1e-4);
    Index max_backtracks = 40;
  };

  /// Where a Z-step starts: the forward pass of theta, or the coordinates the previous Z-step
  /// ended at (same batch; alternating this way makes F monotone at fixed mu).
  enum class z_start { forward, previous };

  mac() : mac(settings{}) {}
  explicit mac(settings config) : settings_(config), mu_(config.mu) {
    constexpr const char* function = "mac";
    detail::require(std::isfinite(config.mu) && config.mu > 0, function, "mu", "finite and > 0",
                    config.mu);
    detail::require(std::isfinite(config.mu_growth) && config.mu_growth >= 1, function,
                    "mu_growth", "finite and >= 1", config.mu_growth);
    detail::require(!std::isnan(config.mu_max) && config.mu_max >= config.mu, function, "mu_max",
                    detail::concat(">= mu (", config.mu, ")"), config.mu_max);
    detail::require(config.z_iterations >= 0, function, "z_iterations", ">= 0",
                    config.z_iterations);
    detail::require(std::isfinite(config.z_step) && config.z_step > 0, function, "z_step",
                    "finite and > 0", config.z_step);
    detail::require(config.z_tolerance >= 0, function, "z_tolerance", ">= 0", config.z_tolerance);
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
    if (!(steps.allFinite() && (steps.array() >= S(0)).all()))
      in.fail("mac W-step sizes", "finite and >= 0", "a negative, NaN or Inf entry");
    mu_ = S(mu);
    layers_.assign(std::size_t(steps.size()), layer_work{});
    for (std::size_t k = 0; k < layers_.size(); ++k) layers_[k].step = steps[Index(k)];
  }

  /// mu <- min(mu * mu_growth, mu_max); train_step calls this once at its end.
  void advance_mu() { mu_ = std::min(mu_ * settings_.mu_growth, settings_.mu_max); }

  /// One MAC iteration on a batch: Z-step from the forward pass, W-step, then advance_mu().
  /// The report's loss and correct count are those of the forward pass; inner_iterations counts
  /// the Z-step's descent steps, inner_energy is the batch mean of F after the Z-step and
  /// inner_residual the batch mean of the per-sample norm of dF/dz there.
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
    const step_report report = solve_z(net, x, y, z_start::forward);
    w_step(net, y, shards);
    advance_mu();
    return report;
  }

  /// The batch-mean estimate dF/dtheta at the Z-step's minimiser (see the header comment), in
  /// the program's parameter layout. Reports as train_step does; does not change mu.
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    const step_report report = solve_z(net, x, y, z_start::forward);
    if (gradient.size() != net.parameter_count()) gradient.resize(net.parameter_count());
    const S inverse_batch = S(1) / S(x.cols());
    for (Index i = 0; i < net.depth(); ++i) {
      const auto u = std::size_t(i);
      net.layer(i).weights(gradient).noalias() = inverse_batch * sig_[u] * z_[u].transpose();
      net.layer(i).bias(gradient) = inverse_batch * sig_[u].rowwise().sum();
    }
    return report;
  }

  /// The Z-step alone (for fixed theta). With z_start::previous it continues from the
  /// coordinates of the previous call, which must have had a batch of the same size (the caller
  /// passes the same x). Records the batch-mean F before the first and after every step in
  /// energy_history().
  template <class Program>
  step_report solve_z(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                      z_start start = z_start::forward) {
    static_assert(std::is_same_v<typename Program::scalar_type, S>,
                  "mac<S> needs a program over the same scalar type S");
    constexpr const char* function = "mac::solve_z";
    detail::require_batch<Program, S>(net, x, y, function);
    const bool warm = start == z_start::previous;
    if (warm) {
      detail::require(fits(net, x.cols()), function, "z_start::previous",
                      "a previous Z-step on a batch of the same size and program", "none");
    }
    allocate(net, x.cols());

    // The forward pass, for the report and as the cold start.
    net.forward(x, forward_);
    step_report report;
    report.loss = detail::mean_loss<Program, S>(net, forward_.z.back(), y, losses_);
    report.correct = count_correct<S>(forward_.z.back(), y);
    const Index L = net.depth();
    if (!warm)
      for (Index k = 1; k < L; ++k) z_[std::size_t(k)] = forward_.z[std::size_t(k)];
    z_[0] = x;
    trial_[0] = x;

    descend(net, y, report);
    z_.back() = out_;
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
  /// Per-sample F at the stored coordinates and the current theta.
  template <class Program>
  RowVector<S> energies(const Program& net, const MatrixCRef<S>& y) {
    detail::require(fits(net, y.cols()), "mac::energies", "the state",
                    "a Z-step on a batch of this size and program first", "none");
    RowVector<S> values;
    net.affine(0, z_[0], a_[0]);
    evaluate(net, y, z_, values, false);
    return values;
  }

  /// The W-step objective of layer index k (0-based) at the stored coordinates: the batch mean
  /// of 1/2 ||z_{k+1} - f(W z_k + b)||^2 for hidden layers (without mu), of the loss for the top.
  template <class Program>
  double layer_objective(const Program& net, Index k, const MatrixCRef<S>& y) {
    detail::require(fits(net, y.cols()), "mac::layer_objective", "the state",
                    "a Z-step on a batch of this size and program first", "none");
    detail::require(k >= 0 && k < net.depth(), "mac::layer_objective", "the layer index",
                    detail::concat("in [0, ", net.depth(), ")"), k);
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

  template <class Program>
  bool fits(const Program& net, Index B) const {
    const auto L = std::size_t(net.depth());
    if (z_.size() != L + 1 || z_[0].cols() != B || z_[0].rows() != net.input_size()) return false;
    for (std::size_t k = 1; k <= L; ++k)
      if (z_[k].rows() != net.layer(Index(k - 1)).outputs() || z_[k].cols() != B) return false;
    return true;
  }

  template <class Program>
  void allocate(const Program& net, Index B) {
    const auto L = std::size_t(net.depth());
    if (layers_.size() != L) layers_.assign(L, layer_work{});
    z_.resize(L + 1);
    trial_.resize(L + 1);
    a_.resize(L);
    eps_.resize(L);
    sig_.resize(L);
    scratch_.resize(L);
    grad_.resize(L);
    previous_grad_.resize(L);
    z_[0].resize(net.input_size(), B);
    for (std::size_t k = 1; k <= L; ++k) {
      const Index n = net.layer(Index(k - 1)).outputs();
      z_[k].resize(n, B);
      trial_[k].resize(n, B);
      a_[k - 1].resize(n, B);
      eps_[k - 1].resize(n, B);
      sig_[k - 1].resize(n, B);
      scratch_[k - 1].resize(n, B);
      grad_[k - 1].resize(n, B);
    }
    out_.resize(net.output_size(), B);
  }

  /// F per sample at coordinates `z` (z[1..L-1] are read; z[0] is x), with the signals s_k and
  /// dF/dz of every hidden layer when `with_gradient`. a_1 = W_1 x + b_1 does not depend on the
  /// coordinates: the caller computes it into a_[0] once for the current theta.
  template <class Program>
  void evaluate(const Program& net, const MatrixCRef<S>& y, const std::vector<Matrix<S>>& z,
                RowVector<S>& energy, bool with_gradient) {
    const Index L = net.depth();
    energy.setZero(z[0].cols());
    const S half_mu = mu_ / S(2);
    for (Index i = 0; i < L; ++i) {
      const auto u = std::size_t(i);
      Matrix<S>& a = a_[u];
      if (i > 0) net.affine(i, z[u], a);
      net.layer(i).visit([&](const auto& pair) {
        if (i + 1 < L) {
          Matrix<S>& e = eps_[u];
          activate<S>(pair, a, e);
          e = z[u + 1] - e;  // eps = z - f(a)
          energy += half_mu * e.colwise().squaredNorm();
          if (with_gradient) {
            scratch_[u] = -e;  // f(a) - z
            vjp<S>(pair, a, scratch_[u], sig_[u]);
            sig_[u] *= mu_;
          }
        } else {
          activate<S>(pair, a, out_);
          net.loss_values(out_, y, losses_);
          energy += losses_;
          if (with_gradient) {
            net.loss().template gradient<S>(out_, y, scratch_[u]);
            vjp<S>(pair, a, scratch_[u], sig_[u]);
          }
        }
      });
    }
    if (with_gradient) {
      for (Index i = 0; i + 1 < L; ++i) {
        const auto u = std::size_t(i);
        grad_[u].noalias() = net.weights(i + 1).transpose() * sig_[u + 1];
        grad_[u] += mu_ * eps_[u];
      }
    }
  }

  template <class Program>
  void gradient_norms(const Program& net) {
    squared_norm_.setZero(z_[0].cols());
    for (Index i = 0; i + 1 < net.depth(); ++i)
      squared_norm_ += grad_[std::size_t(i)].colwise().squaredNorm();
  }

  /// The Z-step from the current z_ (see the header comment).
  template <class Program>
  void descend(const Program& net, const MatrixCRef<S>& y, step_report& report) {
    const Index L = net.depth(), B = z_[0].cols();
    history_.clear();
    history_.reserve(std::size_t(settings_.z_iterations) + 1);
    net.affine(0, z_[0], a_[0]);
    evaluate(net, y, z_, energy_, true);
    gradient_norms(net);
    history_.push_back(double(energy_.mean()));

    Index iterations = 0;
    if (L > 1) {
      const S first_step = settings_.z_step / std::max(mu_, S(1));
      const S largest_step = first_step * S(1e6);
      const S tolerance2 = settings_.z_tolerance * settings_.z_tolerance;
      const double rounding = 4 * double(std::numeric_limits<S>::epsilon());
      int stalled = 0;
      step_.setConstant(B, first_step);
      pending_.resize(std::size_t(B));
      moved_.resize(std::size_t(B));
      accepted_.setZero(B);
      while (iterations < settings_.z_iterations && squared_norm_.maxCoeff() > tolerance2) {
        std::fill(pending_.begin(), pending_.end(), char(1));
        std::fill(moved_.begin(), moved_.end(), char(0));
        Index moved = 0, waiting = B;
        for (Index attempt = 0; attempt <= settings_.max_backtracks && waiting > 0; ++attempt) {
          for (Index j = 0; j < B; ++j) {
            if (!pending_[std::size_t(j)]) continue;
            for (Index k = 1; k < L; ++k) {
              const auto u = std::size_t(k);
              trial_[u].col(j) = z_[u].col(j) - step_(j) * grad_[u - 1].col(j);
            }
          }
          evaluate(net, y, trial_, trial_energy_, false);
          for (Index j = 0; j < B; ++j) {
            if (!pending_[std::size_t(j)]) continue;
            const S bound = energy_(j) - settings_.armijo * step_(j) * squared_norm_(j);
            if (trial_energy_(j) <= bound) {
              for (Index k = 1; k < L; ++k)
                z_[std::size_t(k)].col(j) = trial_[std::size_t(k)].col(j);
              pending_[std::size_t(j)] = 0;
              moved_[std::size_t(j)] = 1;
              accepted_(j) = step_(j);
              --waiting;
              ++moved;
              if (attempt == 0) step_(j) = std::min(S(2) * step_(j), largest_step);
            } else {
              step_(j) /= S(2);
            }
          }
        }
        if (moved == 0) break;  // no sample can descend: stationary up to rounding
        for (Index k = 1; k < L; ++k)
          previous_grad_[std::size_t(k - 1)] = grad_[std::size_t(k - 1)];
        previous_norm_ = squared_norm_;
        evaluate(net, y, z_, energy_, true);
        gradient_norms(net);
        // Barzilai-Borwein: the next trial step of a sample that moved by s = -t g is
        // s's / s'(g_new - g) = t |g|^2 / (|g|^2 - g'g_new) where that is positive.
        inner_.setZero(B);
        for (Index k = 1; k < L; ++k) {
          const auto u = std::size_t(k - 1);
          inner_ += previous_grad_[u].cwiseProduct(grad_[u]).colwise().sum();
        }
        for (Index j = 0; j < B; ++j) {
          if (!moved_[std::size_t(j)]) continue;
          const S curvature = previous_norm_(j) - inner_(j);
          if (curvature > 0) {
            step_(j) = std::min(accepted_(j) * previous_norm_(j) / curvature, largest_step);
          }
        }
        history_.push_back(double(energy_.mean()));
        ++iterations;
        // F stationary up to its rounding for several steps: more would only chase noise.
        const double previous = history_[history_.size() - 2], current = history_.back();
        stalled = previous - current <= rounding * (1 + std::abs(current)) ? stalled + 1 : 0;
        if (stalled == 5) break;
      }
    }
    report.inner_iterations = iterations;
    report.inner_energy = double(energy_.mean());
    report.inner_residual = double(squared_norm_.cwiseSqrt().mean());
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
      const S inverse_batch = S(1) / S(B);
      const Index rows = work.a.rows(), cols = z_[u].rows(), weights = rows * cols;
      work.means.resize(weights + rows + 1);
      MatrixMap<S> weight_gradient(work.means.data(), rows, cols);
      VectorMap<S> bias_gradient(work.means.data() + weights, rows);
      weight_gradient.noalias() = inverse_batch * work.signal * z_[u].transpose();
      bias_gradient.noalias() = inverse_batch * work.signal.rowwise().sum();
      work.means(weights + rows) = value;
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
      bool accepted = false;
      for (Index attempt = 0; attempt <= settings_.max_backtracks; ++attempt) {
        weights = work.saved_weights - work.step * work.weight_gradient();
        bias = work.saved_bias - work.step * work.bias_gradient();
        S trial = layer_value(net, i, y, false);
        shards.mean(std::span<S>(&trial, 1));
        if (trial <= value - settings_.armijo * work.step * squared) {
          accepted = true;
          if (attempt == 0) work.step = std::min(S(2) * work.step, settings_.w_step);
          break;
        }
        work.step /= S(2);
      }
      if (!accepted) {
        weights = work.saved_weights;
        bias = work.saved_bias;
        work.step = settings_.w_step;
        break;
      }
    }
  }

  settings settings_;
  S mu_;
  forward_state<S> forward_;
  std::vector<Matrix<S>> z_, trial_, a_, eps_, sig_, scratch_, grad_;
  Matrix<S> out_;
  std::vector<Matrix<S>> previous_grad_;
  RowVector<S> losses_, energy_, trial_energy_, squared_norm_, step_, accepted_, previous_norm_,
      inner_;
  std::vector<char> pending_, moved_;
  std::vector<double> history_;
  std::vector<layer_work> layers_;
};

}  // namespace bilevel
