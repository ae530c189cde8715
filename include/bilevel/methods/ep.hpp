#pragma once
/// \file
/// Equilibrium propagation (EP; Scellier & Bengio 2017, arXiv:1602.05179) with the symmetric
/// (+beta / -beta) estimate of Laborieux et al. 2021 (arXiv:2006.03824); METHODS.md §5.3.
///
/// Model. EP's model is a layered Hopfield energy, not the feed-forward program; it only borrows
/// a program's parameter layout: W_k = net.weights(k-1) (n_k x n_{k-1}) and b_k = net.bias(k-1)
/// are the couplings between layers k-1 and k and the biases of layer k, and gradients come back
/// in the program's flat layout. The program's activation pairs and its loss are not used: rho is
/// always the hard sigmoid clip(., 0, 1), and the cost C is chosen in the settings. The usual
/// program is its paper's `program<S, mse, hard_sigmoid>` with sizes 784, 500, 10.
/// Per sample (METHODS.md §1), with s_1..s_L the hidden and output states and s_0 = x clamped:
/// ~~~{.unparsed}
///   E(s) = 1/2 sum_k ||s_k||^2 - sum_k rho(s_k)^T W_k rho(s_{k-1}) - sum_k b_k^T rho(s_k),
/// ~~~
/// with rho(s_0) = x as given (no clipping of the input).
///
/// Free phase: the projected gradient flow s <- clip(s - step * dE/ds, 0, 1), all layers at once
/// (synchronously, as in the authors' code), from s = 0, for free_iterations steps, where
/// ~~~{.unparsed}
///   dE/ds_k = s_k - rho'(s_k) .* (W_k rho(s_{k-1}) + W_{k+1}^T rho(s_{k+1}) + b_k)
/// ~~~
/// (no W_{k+1} term for the top layer). rho' is taken as 1 on the closed interval [0, 1]: the
/// state is projected onto [0, 1] after every step, so with rho' = 0 at the ends a unit that has
/// reached 0 or 1 would never move again. With that choice rho(s) = s and rho'(s) = 1 on the whole
/// box, the flow is exactly projected gradient descent of the quadratic 1/2 s^T (I - M) s - c^T s
/// (M the symmetric block coupling of the W_k, c the bias and input drive) over [0, 1]^n, and E
/// decreases at every step when step < 2 / (1 + ||M||_2); for ||M||_2 < 1 E is strictly convex on
/// the box and the fixed point is unique. Prediction (predict()) is the free phase; the output is
/// s_L at its end.
///
/// Nudged phase: from the free fixed point, nudged_iterations steps of the same flow on
/// E + beta C, with C = 1/2 ||s_L - y||^2 (cost::mse, the original) or the softmax cross-entropy
/// of s_L taken as logits (cost::cross_entropy: dC/ds_L = softmax(s_L) (sum y) - y, the library's
/// softmax_cross_entropy loss).
///
/// Gradient estimate of the batch-mean cost at the free fixed point (to descend, METHODS.md §5.3;
/// batch means as in §1; rho(s) = s on the box):
/// ~~~{.unparsed}
///   one-sided:  dW_k = -1/(beta B) sum_batch (rho(s_k^b) rho(s_{k-1}^b)^T - rho(s_k^0) rho(s_{k-1}^0)^T)
///   symmetric:  dW_k = -1/(2 beta B) sum_batch (rho(s_k^+b) rho(s_{k-1}^+b)^T - rho(s_k^-b) rho(s_{k-1}^-b)^T)
/// ~~~
/// and likewise db_k with rho(s_k) alone. Both tend to the true gradient of C(s^0(theta)) as
/// beta -> 0 (one-sided error O(beta), symmetric O(beta^2)). The differences are formed as
/// (a - c) b^T + c (b - d)^T, so small betas do not cancel digits between two large products.
/// With random_sign (one-sided only; the symmetric estimate is the same for either sign) the
/// sign of beta is drawn per batch from a random_source seeded with `seed`, as in the paper.
///
/// Iteration counts. The paper uses free/nudged iterations 20/4, 100/6, 500/8 for one, two and
/// three hidden layers (784-500-10, 784-500-500-10, 784-500-500-500-10), step 0.5, beta 1 with a
/// random sign; the authors' code uses beta 0.5 for the one-hidden-layer net (paper_settings()).
/// The authors' code also starts each example's free phase from its state of the previous epoch
/// ("persistent particles"), which is why 20 free steps suffice there. This class does not keep
/// persistent particles (a batch carries no sample identities through the method interface):
/// every free phase starts from s = 0, so deeper nets need more free iterations than the paper's.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/random.hpp"
#include "../core/types.hpp"
#include "../losses/mse.hpp"
#include "../losses/softmax_cross_entropy.hpp"
#include "method.hpp"

namespace bilevel {

/// Equilibrium propagation (METHODS.md §5.3); a GradientMethod and a PredictingMethod.
template <Scalar S>
class ep {
 public:
  struct settings {
    /// Nudging strength (> 0); per sample (METHODS.md §1).
    S beta = S(0.5);
    /// Steps of the free phase (>= 1); also what predict() runs.
    Index free_iterations = 20;
    /// Steps of each nudged phase (>= 1), started from the free fixed point.
    Index nudged_iterations = 4;
    /// Step size epsilon of the projected flow (> 0); energy descent needs < 2 / (1 + ||M||).
    S step = S(0.5);
    /// The +beta / -beta estimate (two nudged phases) instead of the one-sided one.
    bool symmetric = true;
    /// One-sided estimate with the sign of beta drawn per batch (ignored when symmetric).
    bool random_sign = false;
    /// The cost C nudging the output: 1/2 ||s_L - y||^2 or softmax cross-entropy of s_L.
    enum class cost { mse, cross_entropy } cost = cost::mse;
    /// Seed of the sign draws.
    std::uint64_t seed = 1;
  };

  /// The type of settings::cost (inside settings the member's name hides the enum's; its
  /// enumerators are still reachable as settings::cost::mse and settings::cost::cross_entropy).
  using cost_type = decltype(settings::cost);

  ep() : ep(settings{}) {}
  explicit ep(settings config) : settings_(config), random_(config.seed) {
    constexpr const char* function = "ep";
    detail::require_positive_finite(function, "beta", settings_.beta);
    detail::require(settings_.free_iterations >= 1, function, "free_iterations", ">= 1",
                    settings_.free_iterations);
    detail::require(settings_.nudged_iterations >= 1, function, "nudged_iterations", ">= 1",
                    settings_.nudged_iterations);
    detail::require_positive_finite(function, "step", settings_.step);
  }

  /// The paper's settings for `hidden_layers` = 1, 2 or 3 (free/nudged 20/4, 100/6, 500/8,
  /// step 0.5, one-sided with a random sign; beta 0.5 for one hidden layer as in the authors'
  /// code, 1 otherwise). Without persistent particles the free phase may need more steps.
  static settings paper_settings(Index hidden_layers, std::uint64_t seed = 1) {
    detail::require(hidden_layers >= 1 && hidden_layers <= 3, "ep::paper_settings",
                    "hidden_layers", "1, 2 or 3", hidden_layers);
    settings config;
    const Index free[] = {20, 100, 500}, nudged[] = {4, 6, 8};
    const auto row = std::size_t(std::clamp<Index>(hidden_layers, 1, 3) - 1);  // checked above
    config.free_iterations = free[row];
    config.nudged_iterations = nudged[row];
    config.beta = hidden_layers == 1 ? S(0.5) : S(1);
    config.step = S(0.5);
    config.symmetric = false;
    config.random_sign = true;
    config.seed = seed;
    return config;
  }

  std::string name() const { return "ep"; }
  const settings& config() const { return settings_; }

  /// The random source of beta's sign, so a resumed run draws the signs it would have drawn.
  void save_state(state_writer& out) const {
    out.write_text(name());
    random_.save_state(out);
  }
  void load_state(state_reader& in) {
    in.expect_text(name(), "method");
    random_.load_state(in);
  }

  /// Batch-mean EP gradient estimate in the program's parameter layout. The report: loss = batch
  /// mean of C at the free fixed point, correct = argmax of its s_L against argmax of y,
  /// inner_iterations = free_iterations, inner_residual = max-norm of the last free step
  /// (s_T - s_{T-1}, a fixed-point residual), inner_energy = batch mean of E at the free state.
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    static_assert(std::is_same_v<typename Program::scalar_type, S>,
                  "ep<S>::gradient needs a program over the same scalar type S");
    constexpr const char* function = "ep::gradient";
    detail::require_batch<Program, S>(net, x, y, function);
    if (gradient.size() != net.parameter_count()) gradient.resize(net.parameter_count());

    const Index B = x.cols();
    prepare(net, x);
    step_report report;
    report.inner_iterations = settings_.free_iterations;
    report.inner_residual =
        double(relax(net, free_, settings_.free_iterations, S(0), y));
    cost_values_into(free_.back(), y, cost_row_);
    report.loss = double(cost_row_.mean());
    report.correct = count_correct<S>(free_.back(), y);
    energy_terms(net, input_drive_, free_, next_, energy_row_);
    report.inner_energy = double(energy_row_.mean());

    if (settings_.symmetric) {
      last_beta_ = settings_.beta;
      plus_ = free_;
      relax(net, plus_, settings_.nudged_iterations, settings_.beta, y);
      minus_ = free_;
      relax(net, minus_, settings_.nudged_iterations, -settings_.beta, y);
      contrast(net, x, plus_, minus_, -S(1) / (2 * settings_.beta * S(B)), gradient);
    } else {
      last_beta_ = settings_.random_sign && random_.uniform() < 0.5 ? -settings_.beta
                                                                    : settings_.beta;
      plus_ = free_;
      relax(net, plus_, settings_.nudged_iterations, last_beta_, y);
      contrast(net, x, plus_, free_, -S(1) / (last_beta_ * S(B)), gradient);
    }
    return report;
  }

  /// The free phase from s = 0: writes s_L at its end (n_L x B) into `output`.
  template <class Program>
  void predict(const Program& net, const MatrixCRef<S>& x, Matrix<S>& output) {
    static_assert(std::is_same_v<typename Program::scalar_type, S>,
                  "ep<S>::predict needs a program over the same scalar type S");
    check_shapes(net, x, "ep::predict");
    prepare(net, x);
    last_free_residual_ = relax(net, free_, settings_.free_iterations, S(0), x);
    output = free_.back();
  }

  /// Per-sample energy E(s) (METHODS.md §5.3) for states s = {s_1, ..., s_L} (s_k: n_k x B) with
  /// s_0 = x; rho = clip(., 0, 1) is applied to s_1..s_L, so any real states are accepted.
  template <class Program>
  static RowVector<S> energy(const Program& net, const MatrixCRef<S>& x,
                             const std::vector<Matrix<S>>& s) {
    constexpr const char* function = "ep::energy";
    check_shapes(net, x, function);
    detail::require(Index(s.size()) == net.depth(), function, "the number of states",
                    detail::concat(net.depth(), " (s_1..s_L)"), s.size());
    for (Index k = 0; k < net.depth(); ++k)
      detail::require_shape(function, detail::concat("s_", k + 1), net.layer(k).outputs(),
                            x.cols(), s[std::size_t(k)].rows(), s[std::size_t(k)].cols());
    Matrix<S> drive;
    net.affine(0, x, drive);
    std::vector<Matrix<S>> rho(s.size());
    for (std::size_t k = 0; k < s.size(); ++k) rho[k] = s[k].cwiseMax(S(0)).cwiseMin(S(1));
    // E uses 1/2 ||s||^2 of the raw state and rho everywhere else.
    std::vector<Matrix<S>> drives(s.size());
    RowVector<S> out;
    energy_terms(net, drive, rho, drives, out);
    for (std::size_t k = 0; k < s.size(); ++k)
      out += (s[k].colwise().squaredNorm() - rho[k].colwise().squaredNorm()) / S(2);
    return out;
  }

  /// Per-sample cost C(s_L, y) of the configured kind.
  RowVector<S> cost_values(const MatrixCRef<S>& output, const MatrixCRef<S>& y) const {
    detail::require_shape("ep::cost_values", "y", output.rows(), output.cols(), y.rows(),
                          y.cols());
    RowVector<S> out;
    cost_values_into(output, y, out);
    return out;
  }

  /// States of the last call, s_1..s_L (index k-1 for s_k): the free phase (gradient or
  /// predict), the nudged phase with +beta (or, one-sided, with the signed beta last_beta()),
  /// and the -beta phase of the symmetric estimate.
  const std::vector<Matrix<S>>& free_state() const { return free_; }
  const std::vector<Matrix<S>>& nudged_state() const { return plus_; }
  const std::vector<Matrix<S>>& mirrored_state() const { return minus_; }
  /// The signed beta of the last gradient() (its sign is random with random_sign).
  S last_beta() const { return last_beta_; }
  /// Max-norm of the last free step of the last predict().
  S last_free_residual() const { return last_free_residual_; }

 private:
  template <class Program>
  static void check_shapes(const Program& net, const MatrixCRef<S>& x, const char* function) {
    detail::require_shape(function, "x", net.input_size(), x.cols(), x.rows(), x.cols());
    detail::require(x.cols() > 0, function, "the batch size", "> 0", x.cols());
  }

  /// Sizes the buffers, sets the free state to 0 and computes W_1 x + b_1 (fixed in every phase).
  template <class Program>
  void prepare(const Program& net, const MatrixCRef<S>& x) {
    const auto L = std::size_t(net.depth());
    const Index B = x.cols();
    free_.resize(L);
    next_.resize(L);
    delta_.resize(L);
    for (std::size_t k = 0; k < L; ++k) {
      const Index n = net.layer(Index(k)).outputs();
      free_[k].setZero(n, B);
      next_[k].resize(n, B);
    }
    net.affine(0, x, input_drive_);
  }

  /// `iterations` synchronous projected steps of E + beta C on `s` (beta = 0: the free phase;
  /// y is then unused). Returns the max-norm of the last step.
  template <class Program>
  S relax(const Program& net, std::vector<Matrix<S>>& s, Index iterations, S beta,
          const MatrixCRef<S>& y) {
    const Index L = net.depth();
    const S eps = settings_.step;
    S residual = 0;
    for (Index t = 0; t < iterations; ++t) {
      for (Index k = 0; k < L; ++k) {
        const auto i = std::size_t(k);
        Matrix<S>& h = next_[i];  // the drive W_k s_{k-1} + b_k + W_{k+1}^T s_{k+1}
        if (k == 0) {
          h = input_drive_;
        } else {
          h.noalias() = net.weights(k) * s[i - 1];
          h.colwise() += net.bias(k);
        }
        if (k + 1 < L) h.noalias() += net.weights(k + 1).transpose() * s[i + 1];
        if (k + 1 == L && beta != 0) {
          cost_gradient(s[i], y, cost_gradient_);
          h -= beta * cost_gradient_;
        }
        // s - eps (s - h) = (1 - eps) s + eps h, projected onto [0, 1].
        h = ((S(1) - eps) * s[i] + eps * h).cwiseMax(S(0)).cwiseMin(S(1));
      }
      if (t + 1 == iterations) {
        residual = 0;
        for (Index k = 0; k < L; ++k) {
          const auto i = std::size_t(k);
          residual = std::max(residual, (next_[i] - s[i]).cwiseAbs().maxCoeff());
        }
      }
      for (Index k = 0; k < L; ++k) s[std::size_t(k)].swap(next_[std::size_t(k)]);
    }
    return residual;
  }

  void cost_gradient(const MatrixCRef<S>& output, const MatrixCRef<S>& y, Matrix<S>& g) const {
    g.resize(output.rows(), output.cols());
    if (settings_.cost == settings::cost::mse)
      mse{}.gradient<S>(output, y, g);
    else
      softmax_cross_entropy{}.gradient<S>(output, y, g);
  }

  void cost_values_into(const MatrixCRef<S>& output, const MatrixCRef<S>& y,
                        RowVector<S>& out) const {
    out.resize(output.cols());
    if (settings_.cost == settings::cost::mse)
      mse{}.value<S>(output, y, out);
    else
      softmax_cross_entropy{}.value<S>(output, y, out);
  }

  /// Per-sample E for states already in [0, 1] (rho(s) = s), given drive = W_1 x + b_1:
  /// sum_k 1/2 ||s_k||^2 - s_k . (W_k s_{k-1} + b_k); the drives of layers k >= 2 go into
  /// `drives[k-1]`, one buffer per layer so that none changes size.
  template <class Program>
  static void energy_terms(const Program& net, const Matrix<S>& drive,
                           const std::vector<Matrix<S>>& s, std::vector<Matrix<S>>& drives,
                           RowVector<S>& out) {
    out = s[0].colwise().squaredNorm() / S(2) - s[0].cwiseProduct(drive).colwise().sum();
    for (Index k = 1; k < net.depth(); ++k) {
      const auto i = std::size_t(k);
      Matrix<S>& drive_k = drives[i];
      drive_k.noalias() = net.weights(k) * s[i - 1];
      drive_k.colwise() += net.bias(k);
      out += s[i].colwise().squaredNorm() / S(2) - s[i].cwiseProduct(drive_k).colwise().sum();
    }
  }

  /// gradient = scale * sum_batch (rho(a_k) rho(a_{k-1})^T - rho(c_k) rho(c_{k-1})^T) per layer,
  /// with a_0 = c_0 = x, formed as (a_k - c_k) a_{k-1}^T + c_k (a_{k-1} - c_{k-1})^T.
  template <class Program>
  void contrast(const Program& net, const MatrixCRef<S>& x, const std::vector<Matrix<S>>& a,
                const std::vector<Matrix<S>>& c, S scale, Vector<S>& gradient) {
    const Index L = net.depth();
    for (Index k = 0; k < L; ++k) delta_[std::size_t(k)] = a[std::size_t(k)] - c[std::size_t(k)];
    for (Index k = 0; k < L; ++k) {
      const auto i = std::size_t(k);
      auto weights = net.layer(k).weights(gradient);
      if (k == 0) {
        weights.noalias() = scale * delta_[0] * x.transpose();
      } else {
        weights.noalias() = scale * delta_[i] * a[i - 1].transpose();
        weights.noalias() += scale * c[i] * delta_[i - 1].transpose();
      }
      net.layer(k).bias(gradient) = scale * delta_[i].rowwise().sum();
    }
  }

  settings settings_;
  random_source random_;
  S last_beta_ = 0;
  S last_free_residual_ = 0;
  Matrix<S> input_drive_;               ///< W_1 x + b_1
  std::vector<Matrix<S>> free_;         ///< s^0: s_k at index k-1
  std::vector<Matrix<S>> plus_;         ///< nudged with +beta (one-sided: the signed beta)
  std::vector<Matrix<S>> minus_;        ///< nudged with -beta (symmetric only)
  std::vector<Matrix<S>> next_;         ///< the next iterate / drive, per layer
  std::vector<Matrix<S>> delta_;        ///< phase differences, per layer
  Matrix<S> cost_gradient_;
  RowVector<S> cost_row_, energy_row_;
};

}  // namespace bilevel
