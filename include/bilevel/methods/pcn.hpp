#pragma once
/// \file
/// Predictive coding networks (PCN; Whittington & Bogacz 2017) and their zero-divergence
/// schedule Z-IL (Song et al. 2020), METHODS.md §5.4.
///
/// Energy per sample, with the penalizer coupling (§3) at mu_k = 1 and only the hidden z moving:
/// ~~~{.unparsed}
///   F(z) = l(f_L(W_L z_{L-1} + b_L), y) + sum_{k<L} 1/2 ||z_k - f_k(W_k z_{k-1} + b_k)||^2,
/// ~~~
/// z_0 = x. The output z_L = f_L(a_L) is not a free variable: the loss term is the program's own
/// loss on the output layer's activation, exactly as in the forward pass, so the same code serves
/// softmax cross-entropy (identity output, logits) and MSE through any output pair.
///
/// Notation used below: eps_k = z_k - f(a_k) (k < L), and one pre-activation signal per layer
/// ~~~{.unparsed}
///   s_k = -J_f(a_k)^T eps_k   (k < L),      s_L = J_{f_L}(a_L)^T dl/dz_L,
/// ~~~
/// so that dF/dz_k = eps_k + W_{k+1}^T s_{k+1} for every hidden k (the top hidden layer included),
/// and the gradient estimate (to descend) is dW_k = s_k z_{k-1}^T / B, db_k = sum_cols(s_k) / B.
/// The sign of s_k makes it the analogue of BP's delta_k: at the equilibrium of inference with a
/// small output error, eps_k -> -W_{k+1}^T delta_{k+1} and s_k -> delta_k (§5.4).
///
/// Inference starts from the forward pass and takes T steps z_k <- z_k - rate dF/dz_k, all
/// hidden k at once. Z-IL (`pcn<S>::zil()`): rate 1 and layer k's gradient taken at step
/// t = L - k (the output layer at t = 0), which equals BP exactly.
///
/// Papers: J. Whittington, R. Bogacz, Neural Computation 29(5), 2017; Y. Song et al., "Can the Brain
/// Do Backpropagation? Exact Implementation of Backpropagation in Predictive Coding Networks",
/// NeurIPS 2020.

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../program.hpp"
#include "method.hpp"

namespace bilevel {

/// Predictive coding networks, and Z-IL through pcn::zil() (METHODS.md §5.4); a GradientMethod.
template <Scalar S>
class pcn {
 public:
  struct settings {
    /// Inference steps T. Whittington & Bogacz's code runs up to 50 (§5.4). Ignored by Z-IL,
    /// whose schedule fixes the count at L - 1: by then every layer's gradient has been taken.
    Index iterations = 50;
    /// Gradient-descent step on the hidden z; 0.1 in Whittington & Bogacz's code.
    S inference_rate = S(0.1);
    /// Z-IL: layer k's gradient is taken at inference step t = L - k instead of at the end.
    /// With inference_rate = 1 this is exactly BP; with any other rate it is not.
    bool zero_divergence = false;
  };

  pcn() : pcn(settings{}) {}
  explicit pcn(settings config) : settings_(config) {
    detail::require(settings_.iterations >= 0, "pcn", "iterations", ">= 0", settings_.iterations);
    detail::require_positive_finite("pcn", "inference_rate", settings_.inference_rate);
  }

  /// Z-IL as Song et al. define it: rate 1 and the zero-divergence schedule, equal to BP.
  static pcn zil() {
    settings config;
    config.inference_rate = S(1);
    config.zero_divergence = true;
    return pcn(config);
  }

  std::string name() const { return settings_.zero_divergence ? "zil" : "pcn"; }
  const settings& config() const { return settings_; }

  /// Nothing persists across steps: the state is the name, so another method's is refused.
  void save_state(state_writer& out) const { out.write_text(name()); }
  void load_state(state_reader& in) { in.expect_text(name(), "method"); }

  /// Batch-mean gradient estimate of the batch-mean loss, in the program's parameter layout.
  /// The report's loss and correct count are those of the forward pass; inner_energy is the
  /// batch mean of F and inner_residual the batch mean of the per-sample norm of dF/dz (all
  /// hidden layers stacked), both at the final inference state.
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    static_assert(std::is_same_v<typename Program::scalar_type, S>,
                  "pcn<S>::gradient needs a program over the same scalar type S");
    constexpr const char* function = "pcn::gradient";
    detail::require_batch<Program, S>(net, x, y, function);
    if (gradient.size() != net.parameter_count()) gradient.resize(net.parameter_count());

    const Index L = net.depth(), B = x.cols();
    allocate(net, B);
    z_[0] = x;

    // Inference starts from the forward pass: every eps_k = 0 there.
    evaluate(net, y, true);
    step_report report;
    report.loss = detail::mean_loss<Program, S>(net, z_.back(), y, losses_);
    report.correct = count_correct<S>(z_.back(), y);

    // Z-IL needs L - 1 steps: the first layer's gradient is taken at t = L - 1. Without hidden
    // layers (L = 1) there is nothing to infer.
    const Index steps = settings_.zero_divergence || L == 1 ? L - 1 : settings_.iterations;
    const S rate = settings_.inference_rate;
    for (Index t = 0;; ++t) {
      // Z-IL (§5.4): layer k (1-based) is read at t = L - k, when the error sent down from the
      // output has just reached z_k and nothing below it has moved yet, so a_k and z_{k-1} are
      // still the forward pass; at rate 1 the step moved z_k by exactly -W_{k+1}^T delta_{k+1},
      // which makes the local signal s_k equal BP's delta_k.
      if (settings_.zero_divergence) store_layer_gradient(net, L - 1 - t, gradient);
      descent_direction(net);
      if (t == steps) break;
      // Synchronous: every z_k steps from the same state (all directions computed first).
      for (Index k = 1; k < L; ++k) z_[std::size_t(k)] -= rate * descent_[std::size_t(k - 1)];
      evaluate(net, y, false);
    }
    if (!settings_.zero_divergence)
      for (Index k = 0; k < L; ++k) store_layer_gradient(net, k, gradient);

    report.inner_iterations = steps;
    report.inner_energy = double(energy_.mean());
    residual_.setZero(B);
    for (Index k = 1; k < L; ++k)
      residual_ += descent_[std::size_t(k - 1)].colwise().squaredNorm();
    report.inner_residual = double(residual_.cwiseSqrt().mean());
    return report;
  }

  /// The final inference state of the last batch: z_0 = x, the inferred hidden z_1..z_{L-1},
  /// and the output z_L = f_L(a_L) they produce.
  const std::vector<Matrix<S>>& state() const { return z_; }

 private:
  template <class Program>
  void allocate(const Program& net, Index B) {
    const auto L = std::size_t(net.depth());
    z_.resize(L + 1);
    a_.resize(L);
    error_.resize(L);
    signal_.resize(L);
    descent_.resize(L);
    z_[0].resize(net.input_size(), B);
    for (std::size_t k = 1; k <= L; ++k) {
      const Index n = net.layer(Index(k - 1)).outputs();
      z_[k].resize(n, B);
      a_[k - 1].resize(n, B);
      error_[k - 1].resize(n, B);
      signal_[k - 1].resize(n, B);
      descent_[k - 1].resize(n, B);
    }
    energy_.resize(B);
  }

  /// Errors, signals and the per-sample energy at the current z. With `from_forward` the hidden
  /// z are first set to the forward pass (layer by layer, so each a_k sees the new z_{k-1}).
  /// a_1 = W_1 x + b_1 does not move during inference: it is computed in that first call only.
  template <class Program>
  void evaluate(const Program& net, const MatrixCRef<S>& y, bool from_forward) {
    const Index L = net.depth();
    energy_.setZero();
    for (Index k = 1; k <= L; ++k) {
      const auto i = std::size_t(k);
      Matrix<S>& a = a_[i - 1];
      Matrix<S>& e = error_[i - 1];
      Matrix<S>& s = signal_[i - 1];
      if (k > 1 || from_forward) net.affine(k - 1, z_[i - 1], a);
      net.layer(k - 1).visit([&](const auto& pair) {
        if (k < L) {
          activate<S>(pair, a, e);  // f(a_k), turned into eps_k below
          if (from_forward) z_[i] = e;
          e = z_[i] - e;
          vjp<S>(pair, a, e, s);
          s = -s;
        } else {
          // The output is a function of z_{L-1}, not a free variable: its error is dl/dz_L.
          activate<S>(pair, a, z_[i]);
          net.loss().template gradient<S>(z_[i], y, e);
          vjp<S>(pair, a, e, s);
        }
      });
      if (k < L) energy_ += e.colwise().squaredNorm() / S(2);
    }
    net.loss_values(z_.back(), y, losses_);
    energy_ += losses_;
  }

  /// dF/dz_k = eps_k + W_{k+1}^T s_{k+1} for the hidden k (into descent_[k-1]).
  template <class Program>
  void descent_direction(const Program& net) {
    for (Index k = 1; k < net.depth(); ++k) {
      const auto i = std::size_t(k);
      descent_[i - 1] = error_[i - 1];
      descent_[i - 1].noalias() += net.weights(k).transpose() * signal_[i];
    }
  }

  /// dW_k = s_k z_{k-1}^T / B, db_k = sum_cols(s_k) / B for layer index k (0-based), taken from
  /// the current state: only the layer's own error and input are needed (a local rule).
  template <class Program>
  void store_layer_gradient(const Program& net, Index k, Vector<S>& gradient) const {
    const auto i = std::size_t(k);
    const S inverse_batch = S(1) / S(z_[0].cols());
    net.layer(k).weights(gradient).noalias() = inverse_batch * signal_[i] * z_[i].transpose();
    net.layer(k).bias(gradient) = inverse_batch * signal_[i].rowwise().sum();
  }

  settings settings_;
  std::vector<Matrix<S>> z_;        ///< z_[k] = z_k, k = 0..L
  std::vector<Matrix<S>> a_;        ///< a_[k-1] = a_k
  std::vector<Matrix<S>> error_;    ///< eps_k for k < L; dl/dz_L at index L-1
  std::vector<Matrix<S>> signal_;   ///< s_k at index k-1
  std::vector<Matrix<S>> descent_;  ///< dF/dz_k at index k-1 (hidden k only; last unused)
  RowVector<S> energy_;
  RowVector<S> residual_;
  RowVector<S> losses_;  ///< per-sample losses at the current output
};

}  // namespace bilevel
