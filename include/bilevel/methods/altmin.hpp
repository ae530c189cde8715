#pragma once
/// \file
/// Online alternating minimisation (AltMin; Choromanska et al. 2019), docs/methods.md §5.6.
///
/// Codes are the hidden pre-activations c_k = a_k (k = 1..L-1), with f(c_0) = x. Joint objective,
/// per sample (energies per sample, summed over the code dimension, docs/methods.md §1):
/// ~~~{.unparsed}
///   l(y, f_L(W_L f(c_{L-1}) + b_L)) + mu sum_{k<L} ||c_k - (W_k f(c_{k-1}) + b_k)||^2,
/// ~~~
/// where the loss is the program's own on the top layer's activation (softmax cross-entropy on
/// identity logits, or MSE through any output pair). One step on a batch (train_step):
/// ~~~{.unparsed}
///   (1) forward: c_k = W_k f(c_{k-1}) + b_k; c_k^0 denotes these values.
///   (2) codes, top-down, each code_iterations steps (official: 5) of gradient descent with
///       Nesterov momentum on its own objective:
///         the last code:  E(c_{L-1}) = l(y, f_L(W_L f(c_{L-1}) + b_L))
///                                        + mu ||c_{L-1} - c_{L-1}^0||^2,
///         earlier codes:  E(c_k) = ||c_{k+1} - (W_{k+1} f(c_k) + b_{k+1})||^2 + ||c_k - c_k^0||^2,
///       with c_{k+1} already updated (weights 1:1: mu cancels); c_k^0 = W_k f(c_{k-1}) + b_k
///       because c_{k-1} has not moved yet. Each sample's code is an independent problem.
///   (3) weights, every layer independently (they only read the codes; parallel over layers),
///       weight_iterations Adam steps (official default 1), each layer with its own Adam state
///       (one adam<S> over W_k's slice and one over b_k's slice of the flat parameter buffer):
///         layer k < L:  mean_j ||c_k^j - (W_k f(c_{k-1}^j) + b_k)||^2,
///         layer L:      mean_j l(y^j, f_L(W_L f(c_{L-1}^j) + b_L))
///       (batch means of the per-sample terms), with the updated codes on both sides.
/// ~~~
///
/// Code steps sized by curvature. A code's objective has the Hessian
/// 2 p I + J_f^T W_{k+1}^T H W_{k+1} J_f plus a term in f'' (zero for piecewise-linear pairs away
/// from their kinks), with p = mu for the last code and 1 for the others, J_f = diag f'(c), and
/// H the Hessian of the term above in a_{k+1}: 2 I for the squared error, the loss's Hessian
/// through f_L for the last code. Its Gauss-Newton part is bounded per layer by
/// ~~~{.unparsed}
///   L_k = 2 p + s_k^2 ||W_{k+1}||_2^2 kappa_k,
/// ~~~
/// s_k = sup |f_k'| (1, or the pair's max_slope: sigmoid 1/4, softmax 1/2), kappa_k = 2 for an
/// earlier code and, for the last, the loss's curvature times sup |f_L'|^2 (softmax
/// cross-entropy 1/2 for targets summing to 1, MSE 1); ||W_{k+1}||_2 comes from a few power
/// iterations on every batch (from a fixed start, so every process finds the same value). Every
/// sample of code k takes the step h_k = code_rate / L_k, with momentum in PyTorch's form (the
/// official code's): v <- m v + g, c <- c - h_k (g + m v), v starting at 0.
/// Why no step can overshoot: a step from rest (v = 0) moves by (1 + m) h_k g, and the descent
/// lemma E(c - t g) <= E(c) - t (1 - t L/2) ||g||^2 makes it lower E for any t < 2/L wherever L_k
/// bounds the curvature along the step; the settings require code_rate (1 + m) < 2. Momentum
/// steps are not monotone (they can carry a code past its minimiser), so after every step each
/// sample compares its objective with its last value: a step that raises it is undone and the
/// sample's momentum reset (an adaptive restart), so its next step is again a step from rest; a
/// step from rest that raises E shows that L_k did not hold along it (a kink of ReLU crossed, the
/// f'' term, a steeper user pair, the power iteration's estimate from below), and halves that
/// sample's step. So no code objective ever rises, at any mu, and a code with a nonzero gradient
/// moves on its first step wherever L_k holds. The step falls like 1/mu for the last code at
/// large mu, so its displacement, the hidden layers' signal, is O(1/mu) and never cut to 0.
///
/// With one code step (code_iterations = 1) every code's displacement is a per-layer multiple of
/// BP's error delta_k (docs/methods.md §5.1): the last code moves by
/// -(1 + m) h_{L-1} delta_{L-1}, and an earlier code's gradient at c_k^0, where its residual is
/// -(c_{k+1} - c_{k+1}^0), is -2 J_f^T W_{k+1}^T (c_{k+1} - c_{k+1}^0): BP's recursion, so
/// c_k - c_k^0 = 2 (1 + m) h_k J_f^T W_{k+1}^T (c_{k+1} - c_{k+1}^0). Later steps leave BP's
/// direction: the converged codes do not tend to BP as mu grows (the linearised code update is
/// (I + J W^T W J)^-1 J W^T Delta, docs/methods.md §5.6b), so BP is no target beyond the first
/// step.
///
/// No BatchNorm: the official code puts BatchNorm after each hidden linear map by default, which
/// couples the samples of a batch; ours has none (compare against its `--no-batchnorm` runs).
///
/// Mapping to the official code (IBM/online-alt-min), which uses means: MSE averaged over batch
/// and elements, cross-entropy averaged over the batch, and the code losses
/// ~~~{.unparsed}
///   last code:     (1/mu_o) CE_mean + MSE_mean(c, c^0),
///   earlier code:  MSE_mean(W f(c) + b, c_{k+1}) + MSE_mean(c, c^0).
/// ~~~
/// Multiplying the last code's loss by mu_o B gives
/// ~~~{.unparsed}
///   sum_j [l_j + (mu_o / n_{L-1}) ||c_j - c_j^0||^2],
/// ~~~
/// so the same minimiser as ours with   mu = mu_o / n_{L-1}   (n_{L-1}: the last hidden width).
/// Our default mu = 3e-5 is the official default mu_o = 0.003 at its default width 100; use
/// mu_from_official(mu_o, width) for other widths. The earlier codes' objectives agree up to a
/// factor B n when consecutive widths are equal (n_k = n_{k+1} = n); for unequal widths the
/// official code weights the two terms n_k : n_{k+1} where we weight them 1:1 (docs/methods.md §5.6).
/// Code steps: the official SGD rate r_o on those means is a step r_o / (mu_o B) on our last
/// code's objective and r_o / (B n) on an earlier one's, i.e. in our units
/// ~~~{.unparsed}
///   code_rate = r_o L_{L-1} / (mu_o B)  (last code),   r_o L_k / (B n)  (earlier codes),
/// ~~~
/// which change as the weights do. The official r_o = 0.3 at B = 200, mu_o = 0.003, n = 100 is a
/// step of 0.5 on our last code's objective and 1.5e-5 on the earlier ones'; at a Glorot start of
/// 784-100-100-10 (||W_3||_2^2 = 2.6 to 2.9, ||W_2||_2^2 = 3.6 to 3.8, so L_2 = 1.3 to 1.4 and
/// L_1 = 9.1 to 9.5 over three draws) that is code_rate 0.64 to 0.71 for the last code and 1.4e-4
/// for the first (whose code barely moves; the official BatchNorm rescales this further). Our
/// rates act on the per-sample objectives and do not depend on B.
/// Our default: the official 5 steps and momentum 0.9, and code_rate 0.05 for every code. On
/// MNIST 784-100-100-10 (the trainer's defaults, 2 epochs of 10k images, float, test error
/// over seeds 1-10) the error is flat for code_rate 0.003 to 0.1 (0.03: 6.38%, 0.05: 6.49%,
/// 0.1: 6.50%; the former fixed step 0.03 on every code: 6.65%) and rises above it (seeds 1-5:
/// 7.1% at 0.2, 8.0% at 0.5, 8.2% at 1.0): codes moved further leave BP's direction (see above)
/// for targets that train worse.
/// Weight losses: ours are the official ones times n_k (hidden layers) and equal for the last
/// layer; Adam is invariant to a constant factor on the loss up to its epsilon, so the same Adam
/// settings (lr 0.008) apply. The official schedule (lr halved every 8 epochs) belongs to the
/// trainer: call set_learning_rate once per epoch. The official mu is constant by default (its
/// per-batch increment d_mu is 0), as ours is. Its feed-forward nets have no biases
/// (bias=False); ours have them.
///
/// Idle layers: a hidden layer none of whose codes moved (neither its own c_k nor its input
/// c_{k-1}) has the forward pass as its target and a local gradient of exactly 0; every step
/// reports how many there are (step_report::idle_layers), rather than train nothing silently.
/// The output layer is never idle (its loss gradient is BP's at the updated input).
///
/// As a gradient estimate usable with any optimizer (gradient(), GradientMethod): steps (1) and
/// (2), then the batch-mean gradients of the local weight losses of step (3) at the current
/// weights and updated codes:
/// ~~~{.unparsed}
///   hidden k:  dW_k = 2 r_k f(c_{k-1})^T / B, db_k = 2 sum_cols(r_k) / B,
///              r_k = W_k f(c_{k-1}) + b_k - c_k,
///   top:       dW_L = s_L f(c_{L-1})^T / B,   db_L = sum_cols(s_L) / B,
///              s_L = J_{f_L}(a_L)^T dl/dz_L.
/// ~~~
/// These are local targets, not an estimate of the BP gradient's scale (a hidden layer's signal is
/// twice its code's displacement, small when mu or the code rate is small): use them with a
/// scale-invariant optimizer such as Adam, as the official code does.
///
/// Paper: A. Choromanska et al., "Beyond Backprop: Online Alternating Minimization with Auxiliary
/// Variables", ICML 2019 (arXiv:1806.09077).

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../optimizers/adam.hpp"
#include "../program.hpp"
#include "batch_reduction.hpp"
#include "method.hpp"

namespace bilevel {

/// Online alternating minimisation (docs/methods.md §5.6); a StepMethod and a GradientMethod.
template <Scalar S>
class altmin {
 public:
  struct settings {
    /// Weight of the last code's proximity term (per-sample sums; see the header comment).
    S mu = S(3e-5);
    /// Code updates: steps per code, the step in units of 1 / L_k (each code objective's
    /// curvature bound, see the header comment; code_rate (1 + code_momentum) < 2) and the
    /// Nesterov momentum (official: 5 steps, momentum 0.9; its rate 0.3 on mean losses is no
    /// fixed code_rate, see the header comment).
    Index code_iterations = 5;
    S code_rate = S(0.05);
    S code_momentum = S(0.9);
    /// Adam steps per layer and weight update (official: 1), and the Adam settings of every
    /// layer (official: lr 0.008 for hidden and output layers alike).
    Index weight_iterations = 1;
    typename adam<S>::settings optimizer{.learning_rate = S(0.008)};
  };

  /// Our mu for the official code's mu_o with last hidden width n: mu_o / n.
  static S mu_from_official(S official_mu, Index last_hidden_width) {
    detail::require(last_hidden_width > 0, "altmin::mu_from_official", "last_hidden_width", "> 0",
                    last_hidden_width);
    return official_mu / S(last_hidden_width);
  }

  altmin() : altmin(settings{}) {}
  explicit altmin(settings config) : settings_(config) {
    constexpr const char* function = "altmin";
    detail::require(std::isfinite(config.mu) && config.mu > 0, function, "mu", "finite and > 0",
                    config.mu);
    detail::require(config.code_iterations >= 0, function, "code_iterations", ">= 0",
                    config.code_iterations);
    detail::require(std::isfinite(config.code_momentum) && config.code_momentum >= 0 &&
                        config.code_momentum < 1,
                    function, "code_momentum", "in [0, 1)", config.code_momentum);
    // A step from rest moves by (1 + m) code_rate / L_k: below 2 / L_k it lowers E.
    const S rate_cap = S(2) / (S(1) + config.code_momentum);
    detail::require(config.code_rate > 0 && config.code_rate < rate_cap, function, "code_rate",
                    detail::parts("in (0, 2 / (1 + code_momentum)) = (0, ", rate_cap, ")"),
                    config.code_rate);
    detail::require(config.weight_iterations >= 0, function, "weight_iterations", ">= 0",
                    config.weight_iterations);
    static_cast<void>(adam<S>(config.optimizer, 0, 0));  // validates the Adam settings now
  }

  std::string name() const { return "altmin"; }
  const settings& config() const { return settings_; }

  /// The learning rate of every layer's Adam (for a schedule: call once per epoch).
  void set_learning_rate(S learning_rate) {
    detail::require_positive_finite("altmin::set_learning_rate", "learning_rate", learning_rate);
    settings_.optimizer.learning_rate = learning_rate;
    for (auto& optimizer : weight_optimizers_) optimizer.set_learning_rate(learning_rate);
    for (auto& optimizer : bias_optimizers_) optimizer.set_learning_rate(learning_rate);
  }
  S learning_rate() const { return settings_.optimizer.learning_rate; }
  /// The learning rate and every layer's Adam state (weights, then biases, per layer).
  void save_state(state_writer& out) const {
    out.write_text(name());
    out.write_f64(double(settings_.optimizer.learning_rate));
    out.write_u64(weight_optimizers_.size());
    for (std::size_t k = 0; k < weight_optimizers_.size(); ++k) {
      weight_optimizers_[k].save_state(out);
      bias_optimizers_[k].save_state(out);
    }
  }
  void load_state(state_reader& in) {
    in.expect_text(name(), "method");
    const double learning_rate = in.read_f64("altmin learning rate");
    if (!(std::isfinite(learning_rate) && learning_rate > 0))
      in.fail("altmin learning rate", "finite and > 0", learning_rate);
    const std::uint64_t layers = in.read_u64("altmin layer count");
    std::vector<adam<S>> weight_optimizers, bias_optimizers;
    for (std::uint64_t k = 0; k < layers; ++k) {  // each layer's state is bounded by the bytes
      weight_optimizers.push_back(adam<S>::read_state(in));
      bias_optimizers.push_back(adam<S>::read_state(in));
    }
    settings_.optimizer.learning_rate = S(learning_rate);
    weight_optimizers_ = std::move(weight_optimizers);
    bias_optimizers_ = std::move(bias_optimizers);
  }

  /// Drops every layer's Adam state (they are rebuilt on the next weight update).
  void reset_optimizers() {
    weight_optimizers_.clear();
    bias_optimizers_.clear();
  }

  /// Forward pass, code update, and the weight update of every layer. The report's loss and
  /// correct count are those of the forward pass; inner_iterations is code_iterations,
  /// inner_energy the batch mean of the joint objective at the updated codes (before the
  /// weights move), inner_residual the batch mean of the per-sample norm of the code
  /// objectives' gradients (all codes stacked) at the codes kept, idle_layers the hidden layers
  /// none of whose codes moved (their local gradient is 0). A fixed number of code steps is the
  /// method, not a solver for a target, so nothing is reported unconverged.
  template <class Program>
  step_report train_step(Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y) {
    return train_step(net, x, y, whole_batch{});
  }

  /// The same step on this process's part of a batch split over several: the codes are
  /// updated locally (per sample), the weight gradients are averaged over the whole batch by
  /// `shards` (methods/batch_reduction.hpp), so every process takes the same Adam steps.
  template <class Program, BatchReduction<S> Reduction>
  step_report train_step(Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                         const Reduction& shards) {
    const step_report report = update_codes(net, x, y);
    fit_weights(net, y, shards);
    return report;
  }

  /// Forward pass, code update, then the batch-mean gradients of the local weight losses at the
  /// current weights (see the header comment), in the program's parameter layout.
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    const step_report report = update_codes(net, x, y);
    local_gradient(net, y, gradient);
    return report;
  }

  /// Steps (1) and (2) alone: the forward pass and the top-down code update.
  template <class Program>
  step_report update_codes(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y) {
    static_assert(std::is_same_v<typename Program::scalar_type, S>,
                  "altmin<S> needs a program over the same scalar type S");
    constexpr const char* function = "altmin::update_codes";
    detail::require_batch<Program, S>(net, x, y, function);
    allocate(net, x.cols());
    const Index L = net.depth(), B = x.cols();
    x_ = x;

    // (1) Forward: codes and their activations.
    for (Index i = 0; i + 1 < L; ++i) {
      const auto u = std::size_t(i);
      net.affine(i, input(u), c_[u]);
      net.layer(i).visit([&](const auto& pair) { activate<S>(pair, c_[u], h_[u]); });
    }
    net.affine(L - 1, input(std::size_t(L - 1)), top_a_);
    net.layer(L - 1).visit([&](const auto& pair) { activate<S>(pair, top_a_, out_); });
    step_report report;
    report.loss = detail::mean_loss<Program, S>(net, out_, y, losses_);
    report.correct = count_correct<S>(out_, y);

    // (2) Codes, top-down.
    squared_residual_.setZero(B);
    for (Index i = L - 2; i >= 0; --i) {
      curvature_[std::size_t(i)] = curvature_bound(net, i);
      update_code(net, i, y);
    }
    report.inner_iterations = settings_.code_iterations;
    report.inner_residual = double(squared_residual_.cwiseSqrt().mean());
    // A hidden layer is idle when its code c_k stayed: then so did every code below it (their
    // gradients at c^0 are 0 when the code above stays), its input included.
    for (std::size_t k = 0; k + 1 < std::size_t(L); ++k) report.idle_layers += !moved_[k];

    // The joint objective at the updated codes and current weights.
    double energy = 0;
    for (Index i = 0; i < L; ++i) {
      const double local = double(local_layer(net, i, y, grad_, false));
      energy += i + 1 < L ? double(settings_.mu) * local : local;
    }
    report.inner_energy = energy;
    return report;
  }

  /// Step (3) alone, on the codes of the last update_codes (the same batch's y).
  template <class Program>
  void update_weights(Program& net, const MatrixCRef<S>& y) {
    require_state(net, y, "altmin::update_weights");
    fit_weights(net, y, whole_batch{});
  }

  /// The batch-mean gradients of the local weight losses at the stored codes.
  template <class Program>
  void local_gradient(const Program& net, const MatrixCRef<S>& y, Vector<S>& gradient) {
    require_state(net, y, "altmin::local_gradient");
    if (gradient.size() != net.parameter_count()) gradient.resize(net.parameter_count());
    for (Index i = 0; i < net.depth(); ++i) local_layer(net, i, y, gradient, true);
  }

  /// Layer index k's (0-based) local weight loss at the stored codes and current weights:
  /// mean_j ||c_{k+1} - (W f(c_k) + b)||^2 for hidden layers, mean_j l for the top layer.
  template <class Program>
  double local_loss(const Program& net, Index k, const MatrixCRef<S>& y) {
    require_state(net, y, "altmin::local_loss");
    detail::require(k >= 0 && k < net.depth(), "altmin::local_loss", "the layer index",
                    detail::parts("in [0, ", net.depth(), ")"), k);
    return double(local_layer(net, k, y, grad_, false));
  }

  /// The codes c_1..c_{L-1} after the last code update (index k - 1 for c_k).
  const std::vector<Matrix<S>>& codes() const { return c_; }
  /// Per-sample objective of code c_{k+1} (index k) at its forward value and after its update.
  const RowVector<S>& initial_code_objective(Index k) const { return before_[std::size_t(k)]; }
  const RowVector<S>& code_objective(Index k) const { return after_[std::size_t(k)]; }
  /// The curvature bound L of code c_{k+1}'s objective (index k) in the last code update; its
  /// samples started with the step code_rate / L.
  S code_curvature(Index k) const { return curvature_[std::size_t(k)]; }

  /// Code c_{k+1}'s objective (index k) per sample, and its gradient, at any `code` (n_{k+1} x B):
  /// the objective the last code update minimised (its forward codes c^0 and, for an earlier
  /// code, the updated code above), at the current weights.
  template <class Program>
  void evaluate_code_objective(const Program& net, Index k, const MatrixCRef<S>& y,
                               const MatrixCRef<S>& code, RowVector<S>& values,
                               Matrix<S>& gradient) {
    constexpr const char* function = "altmin::evaluate_code_objective";
    require_state(net, y, function);
    detail::require(k >= 0 && k + 1 < net.depth(), function, "the code index",
                    detail::parts("in [0, ", net.depth() - 1, ")"), k);
    const auto u = std::size_t(k);
    detail::require_shape(function, "code", c_[u].rows(), c_[u].cols(), code.rows(), code.cols());
    evaluate_code(net, k, y, code, work_[u]);
    values = work_[u].value;
    gradient = work_[u].gradient;
  }

 private:
  /// One code's iteration: the iterate's value, gradient and squared gradient norm per sample,
  /// the same of the last code kept (to return to after a rise), each sample's step and whether
  /// its velocity is 0 (its next step is a step from rest).
  struct code_work {
    Matrix<S> start, kept, kept_gradient, velocity, displacement, gradient, activation, next_a,
        loss_gradient, signal, back;
    RowVector<S> value, squared, kept_value, kept_squared, losses, step, at_rest;
    Vector<S> power, power_image;  ///< power iteration on W_{k+1}^T W_{k+1}
  };
  struct layer_work {
    Matrix<S> a, value, residual, signal;
    RowVector<S> losses;  ///< per-sample losses of the top layer
  };

  const Matrix<S>& input(std::size_t layer) const { return layer == 0 ? x_ : h_[layer - 1]; }

  template <class Program>
  void require_state(const Program& net, const MatrixCRef<S>& y, const char* function) const {
    const auto L = std::size_t(net.depth());
    bool ok = x_.rows() == net.input_size() && x_.cols() > 0 && c_.size() + 1 == L &&
              layers_.size() == L;
    for (std::size_t k = 0; ok && k + 1 < L; ++k)
      ok = c_[k].rows() == net.layer(Index(k)).outputs() && c_[k].cols() == x_.cols();
    detail::require(ok, function, "the state",
                    "a code update on this program first (update_codes or gradient)", "none");
    detail::require_shape(function, "y", net.output_size(), x_.cols(), y.rows(), y.cols());
  }

  template <class Program>
  void allocate(const Program& net, Index B) {
    const auto L = std::size_t(net.depth());
    c_.resize(L - 1);
    h_.resize(L - 1);
    work_.resize(L - 1);
    before_.resize(L - 1);
    after_.resize(L - 1);
    curvature_.resize(L - 1);
    moved_.resize(L - 1);
    layers_.resize(L);
    for (std::size_t k = 0; k + 1 < L; ++k) {
      const Index n = net.layer(Index(k)).outputs();
      c_[k].resize(n, B);
      h_[k].resize(n, B);
    }
    out_.resize(net.output_size(), B);
  }

  /// Values and gradients of code index i's objective at `code` (per sample), in work.
  template <class Program>
  void evaluate_code(const Program& net, Index i, const MatrixCRef<S>& y, const MatrixCRef<S>& code,
                     code_work& work) {
    const bool last = i + 2 == net.depth();
    const auto u = std::size_t(i);
    net.layer(i).visit([&](const auto& pair) { activate<S>(pair, code, work.activation); });
    net.affine(i + 1, work.activation, work.next_a);
    work.displacement = code - work.start;  // c - c^0
    const S proximity = last ? settings_.mu : S(1);
    work.value = proximity * work.displacement.colwise().squaredNorm();
    if (last) {
      // l(y, f_L(a)), a = W_L f(c) + b_L: signal J_{f_L}(a)^T dl/dz at a.
      net.layer(i + 1).visit([&](const auto& pair) {
        activate<S>(pair, work.next_a, out_);
        net.loss_values(out_, y, work.losses);
        work.value += work.losses;
        net.loss().template gradient<S>(out_, y, work.loss_gradient);
        vjp<S>(pair, work.next_a, work.loss_gradient, work.signal);
      });
    } else {
      // ||c_{k+1} - a||^2, a = W_{k+1} f(c) + b_{k+1}: signal 2 (a - c_{k+1}).
      work.signal = work.next_a - c_[u + 1];
      work.value += work.signal.colwise().squaredNorm();
      work.signal *= S(2);
    }
    net.transpose(i + 1, work.signal, work.back);
    net.layer(i).visit([&](const auto& pair) { vjp<S>(pair, code, work.back, work.gradient); });
    work.gradient += (S(2) * proximity) * work.displacement;
    work.squared = work.gradient.colwise().squaredNorm();
  }

  /// The curvature bound L_k of code index i's objective (header comment).
  template <class Program>
  S curvature_bound(const Program& net, Index i) {
    const bool last = i + 2 == net.depth();
    S slope = 0, outer = 2;  // outer: the squared error's 2 I
    net.layer(i).visit([&](const auto& pair) {
      slope = S(detail::max_slope<std::decay_t<decltype(pair)>>());
    });
    if (last) {
      net.layer(i + 1).visit([&](const auto& pair) {
        const S top = S(detail::max_slope<std::decay_t<decltype(pair)>>());
        outer = S(detail::loss_curvature<typename Program::loss_type>()) * top * top;
      });
    }
    const S norm = squared_operator_norm(net, i + 1, work_[std::size_t(i)]);
    return S(2) * (last ? settings_.mu : S(1)) + slope * slope * norm * outer;
  }

  /// ||A_k||_2^2 of layer index k by power iteration on A^T A from a fixed start (the same on
  /// every process); an estimate from below, which the code steps' safeguard tolerates. A start
  /// in A's null space falls back on the layer's upper bound.
  template <class Program>
  static S squared_operator_norm(const Program& net, Index k, code_work& work) {
    constexpr int iterations = 20;
    const auto& layer = net.layer(k);
    Vector<S>& v = work.power;
    Vector<S>& image = work.power_image;
    v.setConstant(layer.inputs(), S(1) / std::sqrt(S(layer.inputs())));
    image.resize(layer.outputs());
    for (int t = 0; t < iterations; ++t) {
      net.linear(k, v, image);
      net.transpose(k, image, v);
      const S norm = v.norm();
      if (!(norm > 0)) return layer.squared_norm_bound(net.parameters());
      v /= norm;
    }
    net.linear(k, v, image);
    return image.squaredNorm();
  }

  /// Code index i's steps (header comment): momentum steps of code_rate / L_i, a rise undone
  /// with the sample's momentum reset, its step halved if it rose from rest.
  template <class Program>
  void update_code(const Program& net, Index i, const MatrixCRef<S>& y) {
    const auto u = std::size_t(i);
    code_work& work = work_[u];
    Matrix<S>& code = c_[u];
    const Index B = code.cols(), n = code.rows(), next = net.layer(i + 1).outputs();
    work.start = code;
    work.activation.resize(n, B);
    work.gradient.resize(n, B);
    work.signal.resize(next, B);
    work.loss_gradient.resize(next, B);
    work.velocity.setZero(n, B);
    work.step.setConstant(B, settings_.code_rate / curvature_[u]);
    work.at_rest.setOnes(B);
    const S momentum = settings_.code_momentum;

    evaluate_code(net, i, y, code, work);
    before_[u] = work.value;
    for (Index t = 0; t < settings_.code_iterations; ++t) {
      // Every sample's current code is the lowest it has visited: the one to return to.
      work.kept = code;
      work.kept_gradient = work.gradient;
      work.kept_value = work.value;
      work.kept_squared = work.squared;
      // PyTorch's Nesterov form: v <- m v + g, c <- c - h (g + m v), h per sample.
      work.velocity = momentum * work.velocity + work.gradient;
      code.array() -=
          (work.gradient + momentum * work.velocity).array().rowwise() * work.step.array();
      evaluate_code(net, i, y, code, work);
      for (Index j = 0; j < B; ++j) {
        if (work.value(j) <= work.kept_value(j)) {
          work.at_rest(j) = 0;
          continue;
        }
        // A rise (or NaN): undo it and restart from rest; from rest, L_i did not hold.
        if (work.at_rest(j) != 0) work.step(j) /= 2;
        work.at_rest(j) = 1;
        work.velocity.col(j).setZero();
        code.col(j) = work.kept.col(j);
        work.gradient.col(j) = work.kept_gradient.col(j);
        work.value(j) = work.kept_value(j);
        work.squared(j) = work.kept_squared(j);
      }
    }
    after_[u] = work.value;
    squared_residual_ += work.squared;
    moved_[u] = (code.array() != work.start.array()).any();
    net.layer(i).visit([&](const auto& pair) { activate<S>(pair, code, h_[u]); });
  }

  /// Layer index i's local weight loss (batch mean) at the stored codes, and with
  /// `with_gradient` its batch-mean gradient written into layer i's slices of `gradient`
  /// (program layout, already sized). Touches only layer i's buffers and slices.
  template <class Program>
  S local_layer(const Program& net, Index i, const MatrixCRef<S>& y, Vector<S>& gradient,
                bool with_gradient) {
    const auto u = std::size_t(i);
    layer_work& work = layers_[u];
    const Matrix<S>& in = input(u);
    const Index B = in.cols();
    const bool top = i + 1 == net.depth();
    net.affine(i, in, work.a);
    S value = 0;
    if (top) {
      work.value.resize(work.a.rows(), B);
      work.residual.resize(work.a.rows(), B);
      work.signal.resize(work.a.rows(), B);
      net.layer(i).visit([&](const auto& pair) {
        activate<S>(pair, work.a, work.value);
        net.loss_values(work.value, y, work.losses);
        value = work.losses.mean();
        if (with_gradient) {
          net.loss().template gradient<S>(work.value, y, work.residual);
          vjp<S>(pair, work.a, work.residual, work.signal);
        }
      });
    } else {
      work.signal = work.a - c_[u];
      value = work.signal.squaredNorm() / S(B);
      work.signal *= S(2);
    }
    if (with_gradient) {
      const S inverse_batch = S(1) / S(B);
      net.layer(i).parameter_gradient(in, work.signal, inverse_batch, gradient);
    }
    return value;
  }

  /// Sizes the gradient buffer and (re)builds the per-layer Adam states if the layout changed.
  template <class Program>
  void prepare_optimizers(const Program& net) {
    if (grad_.size() != net.parameter_count()) grad_.resize(net.parameter_count());
    const auto L = std::size_t(net.depth());
    bool fits = weight_optimizers_.size() == L && bias_optimizers_.size() == L;
    for (std::size_t k = 0; fits && k < L; ++k) {
      const auto& layer = net.layer(Index(k));
      fits = weight_optimizers_[k].n_params() == layer.weight_count() &&
             bias_optimizers_[k].n_params() == layer.bias_size();
    }
    if (fits) return;
    reset_optimizers();
    for (std::size_t k = 0; k < L; ++k) {
      const auto& layer = net.layer(Index(k));
      weight_optimizers_.emplace_back(settings_.optimizer, layer.weight_count(),
                                      layer.weight_count());
      bias_optimizers_.emplace_back(settings_.optimizer, layer.bias_size(), 0);
    }
  }

  /// Step (3): every layer independently (its own buffers, slices and Adam states). Each
  /// iteration takes all layers' gradients first (they read only the codes and their own
  /// layer), so that `shards` averages the whole gradient buffer in one call.
  template <class Program, BatchReduction<S> Reduction>
  void fit_weights(Program& net, const MatrixCRef<S>& y, const Reduction& shards) {
    prepare_optimizers(net);
    for (Index iteration = 0; iteration < settings_.weight_iterations; ++iteration) {
      for (Index i = 0; i < net.depth(); ++i) local_layer(net, i, y, grad_, true);
      shards.mean(std::span<S>(grad_.data(), std::size_t(grad_.size())));
      for (Index i = 0; i < net.depth(); ++i) step_layer(net, i);
    }
  }

  /// One Adam step of layer index i from its gradient in grad_.
  template <class Program>
  void step_layer(Program& net, Index i) {
    const auto& layer = net.layer(i);
    const Index weights = layer.weight_count();
    const Index biases = layer.bias_size();
    weight_optimizers_[std::size_t(i)].step(
        net.parameters().segment(layer.weight_offset(), weights),
        grad_.segment(layer.weight_offset(), weights));
    bias_optimizers_[std::size_t(i)].step(net.parameters().segment(layer.bias_offset(), biases),
                                          grad_.segment(layer.bias_offset(), biases));
  }

  settings settings_;
  Matrix<S> x_, out_, top_a_;
  std::vector<Matrix<S>> c_, h_;
  std::vector<code_work> work_;
  std::vector<layer_work> layers_;
  std::vector<RowVector<S>> before_, after_;
  std::vector<S> curvature_;  ///< L_k of every code in the last code update
  std::vector<char> moved_;   ///< whether any sample's code moved in the last code update
  RowVector<S> squared_residual_, losses_;
  Vector<S> grad_;
  std::vector<adam<S>> weight_optimizers_, bias_optimizers_;
};

}  // namespace bilevel
