#pragma once
/// \file
/// Equilibrium propagation (EP; Scellier & Bengio 2017, arXiv:1602.05179) with the symmetric
/// (+beta / -beta) estimate of Laborieux et al. 2021 (arXiv:2006.03824); docs/methods.md §5.3.
///
/// Model. EP trains a layered Hopfield energy built from a program: W_k, layer k's linear map
/// (a dense matrix, or a convolution with W_k^T its transpose, docs/methods.md §1), and
/// b_k = net.bias(k-1) couple layers k-1 and k, layer k's activation pair is rho_k (a function
/// of the state s_k), and the program's loss l, read on the output's rate rho_L(s_L), is the
/// cost C. Per sample (docs/methods.md §1), with s_1..s_L the hidden and output states and
/// s_0 = x clamped:
/// ~~~{.unparsed}
///   E(s) = 1/2 sum_k ||s_k||^2 - sum_k rho_k(s_k)^T (W_k rho_{k-1}(s_{k-1}) + b_k),
///   C(s) = l(rho_L(s_L), y),        rho_0(s_0) = x as given (no clipping of the input).
/// ~~~
/// Which pairs fit (a pair says how it is bounded through its `range`, activations/range.hpp):
/// - clipping pairs (hard sigmoid [0, 1], the paper's rho; hard tanh [-1, 1]): the states are
///   projected onto [lower, upper] after every step, where rho(s) = s; rho' is taken as 1 on
///   the closed interval (as the authors' code does), since with rho' = 0 at the ends a unit
///   that reached a bound would never move again.
/// - smooth bounded pairs (sigmoid, tanh): rho' > 0 everywhere and vanishes only as |s| -> inf,
///   so no unit is ever stuck, and the states are not projected (projecting s onto the range
///   of rho would confuse a state with its rate); E is smooth and bounded below, and a fixed
///   point has |s| <= max rho' |drive|.
/// - the identity, in the output layer only: a linear readout, bounded below through its
///   1/2 ||s_L||^2 term because every hidden rho is bounded. So the usual classifier (bounded
///   hidden pairs, identity output, softmax cross-entropy on s_L) is an EP model.
/// Any other program is refused with a config_error naming the layer, its pair and why:
/// columnwise pairs (softmax: E needs an elementwise rho), unbounded hidden pairs (relu, leaky
/// relu, identity: rho_k^T W rho_{k+1} of two unbounded layers grows like ||s||^2 and beats
/// 1/2 ||s||^2 once a singular value of W exceeds 1, so E is not bounded below), and unbounded
/// output pairs other than the identity.
///
/// Dynamics: all layers at once (synchronously, as in the authors' code) with step epsilon,
/// ~~~{.unparsed}
///   s_k <- P_k(s_k - epsilon dE/ds_k),      dE/ds_k = s_k - rho_k'(s_k) .* h_k,
///   h_k = W_k rho_{k-1}(s_{k-1}) + b_k + W_{k+1}^T rho_{k+1}(s_{k+1})   (no W_{k+1} at the top),
/// ~~~
/// P_k the projection of a clipping layer (the identity otherwise). With a clipping or identity
/// pair in every layer, rho(s) = s on the states' domain and the flow is projected gradient
/// descent of the quadratic 1/2 s^T (I - M) s - c^T s (M the symmetric block coupling of the
/// W_k, c the bias and input drive): E decreases at every step when epsilon < 2 / (1 + ||M||_2),
/// and the fixed point is unique when ||M||_2 < 1. A nudged phase descends E + beta C: the top
/// drive gets -beta dl/dz at rho_L(s_L) (times rho_L'(s_L) through the step for a smooth pair).
///
/// Phases: the free phase s^0 (from 0, or from the example's persistent particle), then the
/// nudged phase from s^0 (with +beta, or a random sign), and for the symmetric estimate a
/// -beta phase from s^0 or, with mirrored_start, from P(2 s^0 - s^{+beta}) (the first-order
/// warm start of docs/methods.md §5.6b; off by default, since it makes one phase depend on the
/// other). Each phase ends
/// - fixed_steps (the paper's): after free_iterations / nudged_iterations steps;
/// - converged: when the displacement rule of methods/stopping_rule.hpp (§5.6b) holds for every
///   sample and layer, judged against the displacement from the free phase's start (free
///   phase) or from s^0 (nudged phases), or at a cap; step_report::unconverged counts the
///   samples that reached a cap in any phase. EP iterates on the states themselves, so the
///   rule's roundoff floor is taken relative to ||s_t||, the size of the iterate.
/// Prediction (predict()) is the free phase; the output is rho_L(s_L) at its end.
///
/// Gradient estimate of the batch-mean cost at the free fixed point (to descend; batch means as
/// in §1; r = rho(s) of the phase's end state):
/// ~~~{.unparsed}
///   one-sided:  dW_k = -1/(beta B) sum_batch (r_k^b r_{k-1}^b^T - r_k^0 r_{k-1}^0^T)
///   symmetric:  dW_k = -1/(2 beta B) sum_batch (r_k^+b r_{k-1}^+b^T - r_k^-b r_{k-1}^-b^T)
/// ~~~
/// and likewise db_k with r_k alone, times layer_scales (see there). With converged phases
/// both tend to the gradient of C(s^0(theta)) as beta -> 0 (one-sided error O(beta), symmetric
/// O(beta^2)). The differences are formed as (a - c) b^T + c (b - d)^T, so that small betas do
/// not cancel digits between two large products; the states themselves differ by O(beta), so
/// in float a beta below about 1e-3 loses digits. With random_sign (one-sided only; the
/// symmetric estimate is the same for either sign) the sign of beta is drawn per batch from a
/// random_source seeded with `seed`, as in the paper.
///
/// Persistent particles (the authors' code): with `particles` = N > 0, EP keeps one state per
/// training example, starting at 0. gradient(net, x, y, samples, gradient) and
/// predict(net, x, samples, output) start each sample's free phase from its particle and store
/// the free phase's end state back, which is why 20 free steps suffice on 784-500-10 once the
/// particles have settled; predict(net, x, output) relaxes from 0. The particles are part of
/// save_state, so a resumed run is exact. Scellier & Bengio's settings: paper_settings().

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../activations/concept.hpp"
#include "../core/error.hpp"
#include "../core/finite.hpp"
#include "../core/random.hpp"
#include "../core/state_stream.hpp"
#include "../core/types.hpp"
#include "method.hpp"
#include "stopping_rule.hpp"

namespace bilevel {

/// Equilibrium propagation (docs/methods.md §5.3); a GradientMethod, a SampleIndexedMethod and
/// a PredictingMethod.
template <Scalar S>
class ep {
 public:
  /// How a relaxation phase ends: after a fixed number of steps (the paper's), or by the
  /// displacement rule of docs/methods.md §5.6b with a reported cap.
  enum class relaxation { fixed_steps, converged };

  struct settings {
    /// Nudging strength (> 0); per sample (docs/methods.md §1).
    S beta = S(0.5);
    /// How each phase ends.
    relaxation mode = relaxation::fixed_steps;
    /// fixed_steps: steps of the free phase (also what predict() runs), >= 1.
    Index free_iterations = 20;
    /// fixed_steps: steps of each nudged phase, >= 1.
    Index nudged_iterations = 4;
    /// converged: tolerance and cap of the free phase. An error e left in s^0 moves the
    /// one-sided estimate by about e / ||s^beta - s^0|| relative to its size, and the free
    /// phase's displacement is O(1) while the nudged one is O(beta): hence a tighter tolerance
    /// than the nudged phases'.
    stopping_settings<S> free_stopping{S(1e-6), 2000};
    /// converged: tolerance and cap of each nudged phase.
    stopping_settings<S> nudged_stopping{S(1e-4), 2000};
    /// Step size epsilon of the flow (> 0); energy descent needs < 2 / (1 + ||M||).
    S step = S(0.5);
    /// The +beta / -beta estimate (two nudged phases) instead of the one-sided one.
    bool symmetric = true;
    /// One-sided estimate with the sign of beta drawn per batch (ignored when symmetric).
    bool random_sign = false;
    /// Symmetric only: the -beta phase starts at P(2 s^0 - s^{+beta}) instead of s^0 (§5.6b).
    bool mirrored_start = false;
    /// Persistent particles for a training set of this many examples (0: none; every free
    /// phase starts from 0).
    Index particles = 0;
    /// Factors on layer k's W_k and b_k in the returned estimate: none (all 1), one value, or
    /// one per layer. With plain SGD at rate r they are per-layer learning rates r x factor
    /// (Scellier & Bengio's); with Adam they change almost nothing, since Adam's steps do not
    /// depend on a gradient's scale.
    std::vector<S> layer_scales = {};
    /// Seed of the sign draws.
    std::uint64_t seed = 1;
  };

  ep() : ep(settings{}) {}
  explicit ep(settings config) : settings_(std::move(config)), random_(settings_.seed) {
    constexpr const char* function = "ep";
    detail::require_positive_finite(function, "beta", settings_.beta);
    detail::require(settings_.free_iterations >= 1, function, "free_iterations", ">= 1",
                    settings_.free_iterations);
    detail::require(settings_.nudged_iterations >= 1, function, "nudged_iterations", ">= 1",
                    settings_.nudged_iterations);
    require_stopping(settings_.free_stopping, "free_stopping");
    require_stopping(settings_.nudged_stopping, "nudged_stopping");
    detail::require_positive_finite(function, "step", settings_.step);
    detail::require(settings_.particles >= 0, function, "particles", ">= 0", settings_.particles);
    for (const S scale : settings_.layer_scales)
      detail::require_positive_finite(function, "every layer_scales entry", scale);
  }

  /// The authors' code's settings for 784-500-10, 784-500-500-10 and 784-500-500-500-10
  /// (`hidden_layers` = 1, 2, 3; docs/methods.md §7): free/nudged steps 20/4, 150/6, 500/8,
  /// step 0.5, the one-sided estimate with a random sign, persistent particles for `examples`
  /// training examples, and per-layer factors for plain SGD at learning rate 1. The code's
  /// cost ||s_L - y||^2 has no 1/2 and the library's mse has: the same nudged states need
  /// twice the code's beta here (1, 2, 2 for its 0.5, 1, 1), and the same steps twice its
  /// per-layer rates, (0.2, 0.1), (0.8, 0.2, 0.02), (0.256, 0.064, 0.016, 0.004).
  static settings paper_settings(Index hidden_layers, Index examples, std::uint64_t seed = 1) {
    detail::require(hidden_layers >= 1 && hidden_layers <= 3, "ep::paper_settings",
                    "hidden_layers", "1, 2 or 3", hidden_layers);
    settings config;
    const auto row = std::size_t(hidden_layers - 1);
    const Index free[] = {20, 150, 500}, nudged[] = {4, 6, 8};
    const double code_beta[] = {0.5, 1, 1};
    const std::vector<double> code_rates[] = {
        {0.1, 0.05}, {0.4, 0.1, 0.01}, {0.128, 0.032, 0.008, 0.002}};
    config.free_iterations = free[row];
    config.nudged_iterations = nudged[row];
    config.beta = S(2 * code_beta[row]);
    for (const double rate : code_rates[row]) config.layer_scales.push_back(S(2 * rate));
    config.step = S(0.5);
    config.symmetric = false;
    config.random_sign = true;
    config.particles = examples;
    config.seed = seed;
    return config;
  }

  std::string name() const { return "ep"; }
  const settings& config() const { return settings_; }

  /// The random source of beta's sign and the persistent particles, so a resumed run draws the
  /// signs and starts the free phases it would have.
  void save_state(state_writer& out) const {
    out.write_text(name());
    random_.save_state(out);
    out.write_u64(particles_.size());
    for (const Matrix<S>& layer : particles_) {
      out.write_index(layer.rows());
      out.write_values<S>(Eigen::Map<const Vector<S>>(layer.data(), layer.size()));
    }
  }
  void load_state(state_reader& in) {
    in.expect_text(name(), "method");
    random_source random = random_;
    random.load_state(in);
    const Index examples = settings_.particles;
    const Index layers =
        in.read_index("ep particle layers", 0, examples > 0 ? Index(1) << 20 : Index(0));
    auto particles = std::vector<Matrix<S>>(std::size_t(layers));
    for (Matrix<S>& layer : particles) {
      const Index rows = in.read_index("ep particle layer size", 1, Index(1) << 31);
      const Vector<S> values = in.read_values<S>("ep particles", rows * examples);
      if (!all_finite(values)) in.fail("ep particles", "finite", "a NaN or Inf entry");
      layer = Eigen::Map<const Matrix<S>>(values.data(), rows, examples);
    }
    random_ = random;
    particles_ = std::move(particles);
  }

  /// Batch-mean EP gradient estimate in the program's parameter layout, every free phase from
  /// 0 (without persistent particles). The report: loss = batch mean of C at the free state,
  /// correct = argmax of rho_L(s_L) against argmax of y, inner_iterations = the free phase's
  /// steps, inner_residual = max-norm of its last step (a fixed-point residual), inner_energy =
  /// batch mean of E at the free state, unconverged = samples that reached a cap (converged).
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    return estimate(net, x, y, {}, false, gradient);
  }

  /// The same with the batch's sample indices (samples[j]: the training example of column j),
  /// whose persistent particles start the free phases and take their end states.
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       std::span<const Index> samples, Vector<S>& gradient) {
    return estimate(net, x, y, samples, true, gradient);
  }

  /// The free phase from s = 0: writes rho_L(s_L) at its end (n_L x B) into `output`.
  template <class Program>
  void predict(const Program& net, const MatrixCRef<S>& x, Matrix<S>& output) {
    relax_free_only(net, x, {}, output);
  }

  /// The free phase from the samples' persistent particles, which take its end states.
  template <class Program>
  void predict(const Program& net, const MatrixCRef<S>& x, std::span<const Index> samples,
               Matrix<S>& output) {
    detail::require(settings_.particles > 0, "ep::predict", "particles (with sample indices)",
                    "> 0", settings_.particles);
    check_samples(samples, x.cols(), "ep::predict");
    relax_free_only(net, x, samples, output);
  }

  /// Per-sample energy E(s) (docs/methods.md §5.3) for states s = {s_1, ..., s_L} (s_k: n_k x B)
  /// with s_0 = x; rho_k = f_k of layer k's pair is applied to any real state (for a clipping
  /// pair, 1/2 ||s_k||^2 still takes the state itself).
  template <class Program>
  static RowVector<S> energy(const Program& net, const MatrixCRef<S>& x,
                             const std::vector<Matrix<S>>& s) {
    constexpr const char* function = "ep::energy";
    check_shapes(net, x, function);
    detail::require(Index(s.size()) == net.depth(), function, "the number of states",
                    detail::parts(net.depth(), " (s_1..s_L)"), s.size());
    for (Index k = 0; k < net.depth(); ++k) {
      kind_of(net, k, function);
      detail::require_shape(function, detail::concat("s_", k + 1), net.layer(k).outputs(),
                            x.cols(), s[std::size_t(k)].rows(), s[std::size_t(k)].cols());
    }
    std::vector<Matrix<S>> rho(s.size()), drives(s.size());
    for (std::size_t k = 0; k < s.size(); ++k) {
      rho[k].resize(s[k].rows(), s[k].cols());
      net.layer(Index(k)).visit([&](const auto& pair) { activate<S>(pair, s[k], rho[k]); });
    }
    Matrix<S> drive;
    net.affine(0, x, drive);
    RowVector<S> out;
    energy_terms(net, drive, s, [&](Index k) -> const Matrix<S>& { return rho[std::size_t(k)]; },
                 drives, out);
    return out;
  }

  /// States of the last call, s_1..s_L (index k-1 for s_k): the free phase (gradient or
  /// predict), the nudged phase with +beta (or, one-sided, with the signed beta last_beta()),
  /// and the -beta phase of the symmetric estimate.
  const std::vector<Matrix<S>>& free_state() const { return free_; }
  const std::vector<Matrix<S>>& nudged_state() const { return plus_; }
  const std::vector<Matrix<S>>& mirrored_state() const { return minus_; }
  /// The persistent particles, s_k of every example at index k-1 (n_k x particles); empty
  /// before the first call with sample indices.
  const std::vector<Matrix<S>>& particle_states() const { return particles_; }
  /// The signed beta of the last gradient() (its sign is random with random_sign).
  S last_beta() const { return last_beta_; }
  /// Steps taken by the phases of the last call: free, nudged (+beta or the signed beta), -beta.
  Index last_free_iterations() const { return steps_[0]; }
  Index last_nudged_iterations() const { return steps_[1]; }
  Index last_mirrored_iterations() const { return steps_[2]; }
  /// Max-norm of the last free step of the last predict().
  S last_free_residual() const { return last_free_residual_; }
  /// Samples of the last predict() whose free phase reached its cap (converged mode).
  Index last_unconverged() const { return last_unconverged_; }

 private:
  enum class layer_form { clipping, smooth, linear };
  /// How layer k enters E: its form and, for a clipping pair, the interval of its states.
  struct layer_kind {
    layer_form form = layer_form::linear;
    S lower = 0, upper = 0;
  };
  enum class phase { free, nudged };

  void require_stopping(const stopping_settings<S>& stop, const char* what) const {
    const auto name = [what](const char* member) { return detail::concat(what, ".", member); };
    if (!(stop.tolerance > 0 && stop.tolerance < 1))
      detail::require(false, "ep", name("tolerance"), "in (0, 1)", stop.tolerance);
    if (stop.max_iterations < 1)
      detail::require(false, "ep", name("max_iterations"), ">= 1", stop.max_iterations);
  }

  [[noreturn]] static void refuse(const char* function, Index k, const std::string& pair,
                                  const char* reason) {
    throw config_error(detail::concat(function, ": layer ", k + 1, " (pair ", pair,
                                      ") cannot be an EP layer: ", reason));
  }

  /// Layer k's form, or a config_error saying why EP cannot represent it (file comment).
  template <class Program>
  static layer_kind kind_of(const Program& net, Index k, const char* function) {
    const bool output = k + 1 == net.depth();
    return net.layer(k).visit([&](const auto& pair) -> layer_kind {
      using P = std::decay_t<decltype(pair)>;
      if constexpr (ColumnwisePair<P, S>) {
        refuse(function, k, pair.name(),
               "a columnwise pair couples the units of a layer, and the Hopfield energy needs an "
               "elementwise rho");
      } else if constexpr (bounded_pair<P>) {
        if constexpr (P::range.clips)
          return {layer_form::clipping, S(P::range.lower), S(P::range.upper)};
        else
          return {layer_form::smooth, S(0), S(0)};
      } else if constexpr (detail::linear_pair<P>) {
        if (!output)
          refuse(function, k, pair.name(),
                 "its range is unbounded, and an unbounded hidden rho leaves the Hopfield energy "
                 "unbounded below (rho^T W rho outgrows 1/2 ||s||^2); the identity fits the "
                 "output layer only (a linear readout)");
        return {layer_form::linear, S(0), S(0)};
      } else {
        refuse(function, k, pair.name(),
               output ? "an output pair must be bounded (a `range` member: hard_sigmoid, "
                        "hard_tanh, sigmoid, tanh) or the identity (a linear readout)"
                      : "its range is unbounded, and an unbounded hidden rho leaves the Hopfield "
                        "energy unbounded below (rho^T W rho outgrows 1/2 ||s||^2); hidden "
                        "layers need a bounded pair (a `range` member: hard_sigmoid, hard_tanh, "
                        "sigmoid, tanh)");
      }
    });
  }

  template <class Program>
  static void check_shapes(const Program& net, const MatrixCRef<S>& x, const char* function) {
    detail::require_sample_columns(function, "x", net.input_size(), x.rows(), x.cols());
    detail::require(x.cols() > 0, function, "the batch size", "> 0", x.cols());
  }

  /// One index per column, each naming a particle; formats messages only on failure.
  void check_samples(std::span<const Index> samples, Index batch, const char* function) const {
    if (Index(samples.size()) != batch)
      detail::require(false, function, "the number of sample indices", "the batch size",
                      detail::parts(samples.size(), " for ", batch, " columns"));
    if (settings_.particles == 0) return;
    for (const Index sample : samples)
      if (sample < 0 || sample >= settings_.particles)
        detail::require(false, function, "a sample index",
                        detail::parts("in [0, ", settings_.particles, ") (particles)"), sample);
  }

  template <class Program>
  void check_layer_scales(const Program& net, const char* function) const {
    if (!settings_.layer_scales.empty())
      detail::require_per_layer(settings_.layer_scales.size(), net.depth(), function,
                                "the number of layer_scales");
  }

  S layer_scale(Index k) const {
    const auto& scales = settings_.layer_scales;
    if (scales.empty()) return S(1);
    return scales.size() == 1 ? scales.front() : scales[std::size_t(k)];
  }

  template <class Program>
  step_report estimate(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       std::span<const Index> samples, bool indexed, Vector<S>& gradient) {
    static_assert(std::is_same_v<typename Program::scalar_type, S>,
                  "ep<S>::gradient needs a program over the same scalar type S");
    constexpr const char* function = "ep::gradient";
    detail::require_batch<Program, S>(net, x, y, function);
    if (indexed) {
      check_samples(samples, x.cols(), function);
    } else if (settings_.particles > 0) {
      throw config_error(detail::concat(
          function, ": persistent particles are on (particles = ", settings_.particles,
          "), so the batch's sample indices must be given: gradient(net, x, y, samples, "
          "gradient)"));
    }
    check_layer_scales(net, function);
    if (gradient.size() != net.parameter_count()) gradient.resize(net.parameter_count());

    const Index B = x.cols();
    prepare(net, x, function);
    start_free_phase(net, samples);
    step_report report;
    steps_[0] = relax(net, free_, S(0), y, phase::free, start_);
    report.inner_iterations = steps_[0];
    report.inner_residual = double(residual_);
    store_particles(samples);
    fill_rates(net, free_, free_rho_);
    const Matrix<S>& output = rate(net.depth() - 1, free_, free_rho_);
    net.loss_values(output, y, cost_row_);
    report.loss = double(cost_row_.mean());
    report.correct = count_correct<S>(output, y);
    energy_terms(net, input_drive_, free_,
                 [this](Index k) -> const Matrix<S>& { return rate(k, free_, free_rho_); }, next_,
                 energy_row_);
    report.inner_energy = double(energy_row_.mean());

    if (settings_.symmetric) {
      last_beta_ = settings_.beta;
      plus_ = free_;
      steps_[1] = relax(net, plus_, settings_.beta, y, phase::nudged, free_);
      if (settings_.mirrored_start)
        mirror(free_, plus_, minus_);
      else
        minus_ = free_;
      steps_[2] = relax(net, minus_, -settings_.beta, y, phase::nudged, free_);
      fill_rates(net, plus_, plus_rho_);
      fill_rates(net, minus_, minus_rho_);
      contrast(net, x, plus_, plus_rho_, minus_, minus_rho_, -S(1) / (2 * settings_.beta * S(B)),
               gradient);
    } else {
      last_beta_ = settings_.random_sign && random_.uniform() < 0.5 ? -settings_.beta
                                                                    : settings_.beta;
      plus_ = free_;
      steps_[1] = relax(net, plus_, last_beta_, y, phase::nudged, free_);
      steps_[2] = 0;
      fill_rates(net, plus_, plus_rho_);
      contrast(net, x, plus_, plus_rho_, free_, free_rho_, -S(1) / (last_beta_ * S(B)),
               gradient);
    }
    report.unconverged = Index((unconverged_.array() != 0).count());
    return report;
  }

  template <class Program>
  void relax_free_only(const Program& net, const MatrixCRef<S>& x, std::span<const Index> samples,
                       Matrix<S>& output) {
    static_assert(std::is_same_v<typename Program::scalar_type, S>,
                  "ep<S>::predict needs a program over the same scalar type S");
    constexpr const char* function = "ep::predict";
    check_shapes(net, x, function);
    prepare(net, x, function);
    start_free_phase(net, samples);
    steps_[0] = relax(net, free_, S(0), x, phase::free, start_);
    steps_[1] = steps_[2] = 0;
    last_free_residual_ = residual_;
    last_unconverged_ = Index((unconverged_.array() != 0).count());
    store_particles(samples);
    fill_rates(net, free_, free_rho_);
    output = rate(net.depth() - 1, free_, free_rho_);
  }

  /// Sizes the buffers for the batch, finds every layer's form (or refuses the program), and
  /// computes W_1 x + b_1 (fixed in every phase).
  template <class Program>
  void prepare(const Program& net, const MatrixCRef<S>& x, const char* function) {
    const auto L = std::size_t(net.depth());
    const Index B = x.cols();
    kinds_.resize(L);
    for (std::size_t k = 0; k < L; ++k) kinds_[k] = kind_of(net, Index(k), function);
    for (auto* buffers : {&free_, &start_, &next_, &work_rho_, &free_rho_, &plus_rho_,
                          &minus_rho_, &slope_, &delta_})
      buffers->resize(L);
    for (std::size_t k = 0; k < L; ++k) {
      const Index n = net.layer(Index(k)).outputs();
      free_[k].resize(n, B);
      next_[k].resize(n, B);
    }
    net.affine(0, x, input_drive_);
    cost_gradient_.resize(net.output_size(), B);
    unconverged_.setZero(B);
  }

  /// The free phase starts from 0, or from the samples' particles (made on first use).
  template <class Program>
  void start_free_phase(const Program& net, std::span<const Index> samples) {
    const auto L = std::size_t(net.depth());
    if (samples.empty() || settings_.particles == 0) {
      for (std::size_t k = 0; k < L; ++k) free_[k].setZero();
    } else {
      if (particles_.empty()) {
        particles_.resize(L);
        for (std::size_t k = 0; k < L; ++k)
          particles_[k].setZero(net.layer(Index(k)).outputs(), settings_.particles);
      }
      detail::require(particles_.size() == L, "ep", "the number of particle layers",
                      "the program's depth", particles_.size());
      for (std::size_t k = 0; k < L; ++k) {
        if (particles_[k].rows() != free_[k].rows())
          detail::require(false, "ep", detail::parts("the particles' layer ", k + 1, " size"),
                          detail::parts(free_[k].rows(), " (the program's)"),
                          particles_[k].rows());
        for (std::size_t j = 0; j < samples.size(); ++j)
          free_[k].col(Index(j)) = particles_[k].col(samples[j]);
      }
    }
    if (settings_.mode == relaxation::converged) start_ = free_;
  }

  void store_particles(std::span<const Index> samples) {
    if (samples.empty() || settings_.particles == 0) return;
    for (std::size_t k = 0; k < particles_.size(); ++k)
      for (std::size_t j = 0; j < samples.size(); ++j)
        particles_[k].col(samples[j]) = free_[k].col(Index(j));
  }

  /// rho_k(s_k) into rho[k] for the smooth layers; the other layers' rates are the states.
  template <class Program>
  void fill_rates(const Program& net, const std::vector<Matrix<S>>& s,
                  std::vector<Matrix<S>>& rho) const {
    for (std::size_t k = 0; k < s.size(); ++k) {
      if (kinds_[k].form != layer_form::smooth) continue;
      rho[k].resize(s[k].rows(), s[k].cols());
      net.layer(Index(k)).visit([&](const auto& pair) {
        if constexpr (ElementwisePair<std::decay_t<decltype(pair)>, S>)
          activate<S>(pair, s[k], rho[k]);
      });
    }
  }

  /// rho_k(s_k): the state itself where rho is the identity on the states' domain.
  const Matrix<S>& rate(Index k, const std::vector<Matrix<S>>& s,
                        const std::vector<Matrix<S>>& rho) const {
    const auto i = std::size_t(k);
    return kinds_[i].form == layer_form::smooth ? rho[i] : s[i];
  }

  /// P(2 s^0 - s^{+beta}) into `out`, the first-order start of the -beta phase (§5.6b).
  void mirror(const std::vector<Matrix<S>>& free, const std::vector<Matrix<S>>& plus,
              std::vector<Matrix<S>>& out) const {
    out.resize(free.size());
    for (std::size_t k = 0; k < free.size(); ++k) {
      out[k] = S(2) * free[k] - plus[k];
      if (kinds_[k].form == layer_form::clipping)
        out[k] = out[k].cwiseMax(kinds_[k].lower).cwiseMin(kinds_[k].upper);
    }
  }

  /// Relaxes `s` on E + beta C (beta = 0: the free phase; y unused then) until the phase ends
  /// (see the file comment), judging displacements against `reference` in the converged mode.
  /// Returns the steps taken; residual_ is the max-norm of the last step, and the samples a
  /// cap stopped are marked in unconverged_.
  template <class Program>
  Index relax(const Program& net, std::vector<Matrix<S>>& s, S beta, const MatrixCRef<S>& y,
              phase which, const std::vector<Matrix<S>>& reference) {
    const Index L = net.depth();
    const bool converged = settings_.mode == relaxation::converged;
    const stopping_settings<S>& stop =
        which == phase::free ? settings_.free_stopping : settings_.nudged_stopping;
    const Index cap = converged ? stop.max_iterations
                      : which == phase::free ? settings_.free_iterations
                                             : settings_.nudged_iterations;
    if (converged) rule_.start(L, s.front().cols(), stop.tolerance);
    bool done = false;
    Index t = 0;
    while (t < cap && !done) {
      ++t;
      fill_rates(net, s, work_rho_);
      for (Index k = 0; k < L; ++k) {
        const auto i = std::size_t(k);
        Matrix<S>& h = next_[i];  // the drive h_k, then the next state
        if (k == 0) {
          h = input_drive_;
        } else {
          net.affine(k, rate(k - 1, s, work_rho_), h);
        }
        if (k + 1 < L)
          net.transpose(k + 1, rate(k + 1, s, work_rho_), h, S(1), output_mode::add);
        if (k + 1 == L && beta != 0) {
          net.loss_gradient(rate(k, s, work_rho_), y, cost_gradient_);
          h -= beta * cost_gradient_;
        }
        step_layer(net, k, s[i], h);
      }
      if (converged || t == cap) {
        residual_ = 0;
        for (Index k = 0; k < L; ++k) {
          const auto i = std::size_t(k);
          residual_ = std::max(residual_, (next_[i] - s[i]).cwiseAbs().maxCoeff());
          if (converged) {
            step_norm_.noalias() = (next_[i] - s[i]).colwise().norm();
            displacement_norm_.noalias() = (next_[i] - reference[i]).colwise().norm();
            size_norm_.noalias() = next_[i].colwise().norm();
            rule_.observe(k, step_norm_, displacement_norm_, size_norm_);
          }
        }
      }
      for (Index k = 0; k < L; ++k) s[std::size_t(k)].swap(next_[std::size_t(k)]);
      if (converged) done = rule_.end_iteration();
    }
    if (converged && !done)
      for (Index j = 0; j < unconverged_.size(); ++j)
        if (!rule_.converged(j)) unconverged_(j) = 1;
    return t;
  }

  /// h (layer k's drive, the nudge included) becomes its next state P_k(s - epsilon dE/ds).
  template <class Program>
  void step_layer(const Program& net, Index k, const Matrix<S>& s, Matrix<S>& h) {
    const S eps = settings_.step;
    const layer_kind& kind = kinds_[std::size_t(k)];
    switch (kind.form) {
      case layer_form::clipping:  // s - eps (s - h) = (1 - eps) s + eps h, projected
        h = ((S(1) - eps) * s + eps * h).cwiseMax(kind.lower).cwiseMin(kind.upper);
        break;
      case layer_form::linear:
        h = (S(1) - eps) * s + eps * h;
        break;
      case layer_form::smooth: {  // (1 - eps) s + eps rho'(s) .* h
        Matrix<S>& slope = slope_[std::size_t(k)];
        slope.resize(h.rows(), h.cols());
        net.layer(k).visit([&](const auto& pair) {
          if constexpr (ElementwisePair<std::decay_t<decltype(pair)>, S>)
            vjp<S>(pair, s, h, slope);
        });
        h = (S(1) - eps) * s + eps * slope;
        break;
      }
    }
  }

  /// Per-sample E = sum_k 1/2 ||s_k||^2 - r_k . (W_k r_{k-1} + b_k), with r(k) = rho_k(s_k) and
  /// drive = W_1 x + b_1; the drives of layers k >= 2 go into `drives[k-1]`, one buffer per
  /// layer so that none changes size.
  template <class Program, class Rates>
  static void energy_terms(const Program& net, const Matrix<S>& drive,
                           const std::vector<Matrix<S>>& s, const Rates& r,
                           std::vector<Matrix<S>>& drives, RowVector<S>& out) {
    out = s[0].colwise().squaredNorm() / S(2) - r(0).cwiseProduct(drive).colwise().sum();
    for (Index k = 1; k < net.depth(); ++k) {
      const auto i = std::size_t(k);
      Matrix<S>& drive_k = drives[i];
      net.affine(k, r(k - 1), drive_k);
      out += s[i].colwise().squaredNorm() / S(2) - r(k).cwiseProduct(drive_k).colwise().sum();
    }
  }

  /// gradient = scale_k * sum_batch (a_k a_{k-1}^T - c_k c_{k-1}^T) per layer k, for the rates
  /// a, c of two phases with a_0 = c_0 = x, formed as (a_k - c_k) a_{k-1}^T + c_k (a_{k-1} -
  /// c_{k-1})^T; scale_k = scale times layer k's factor.
  template <class Program>
  void contrast(const Program& net, const MatrixCRef<S>& x, const std::vector<Matrix<S>>& a_s,
                const std::vector<Matrix<S>>& a_rho, const std::vector<Matrix<S>>& c_s,
                const std::vector<Matrix<S>>& c_rho, S scale, Vector<S>& gradient) {
    const Index L = net.depth();
    for (Index k = 0; k < L; ++k) delta_[std::size_t(k)] = rate(k, a_s, a_rho) - rate(k, c_s, c_rho);
    for (Index k = 0; k < L; ++k) {
      const auto i = std::size_t(k);
      const S factor = settings_.layer_scales.empty() ? scale : scale * layer_scale(k);
      const auto& layer = net.layer(k);
      if (k == 0) {
        layer.parameter_gradient(x, delta_[0], factor, gradient);
      } else {
        layer.parameter_gradient(rate(k - 1, a_s, a_rho), delta_[i], factor, gradient);
        layer.add_weight_gradient(delta_[i - 1], rate(k, c_s, c_rho), factor, gradient);
      }
    }
  }

  settings settings_;
  random_source random_;
  S last_beta_ = 0;
  S last_free_residual_ = 0;
  Index last_unconverged_ = 0;
  S residual_ = 0;
  Index steps_[3] = {0, 0, 0};
  std::vector<layer_kind> kinds_;
  detail::displacement_rule<S> rule_;
  Matrix<S> input_drive_;               ///< W_1 x + b_1
  std::vector<Matrix<S>> free_;         ///< s^0: s_k at index k-1
  std::vector<Matrix<S>> start_;        ///< the free phase's start (converged mode)
  std::vector<Matrix<S>> plus_;         ///< nudged with +beta (one-sided: the signed beta)
  std::vector<Matrix<S>> minus_;        ///< nudged with -beta (symmetric only)
  std::vector<Matrix<S>> next_;         ///< the next iterate / drive, per layer
  std::vector<Matrix<S>> work_rho_;     ///< rates of the smooth layers during a phase
  std::vector<Matrix<S>> free_rho_, plus_rho_, minus_rho_;  ///< rates at the phases' ends
  std::vector<Matrix<S>> slope_;        ///< rho'(s) .* h of the smooth layers during a step
  std::vector<Matrix<S>> delta_;        ///< rate differences, per layer
  std::vector<Matrix<S>> particles_;    ///< persistent particles: n_k x particles per layer
  Matrix<S> cost_gradient_;
  RowVector<S> cost_row_, energy_row_, unconverged_;
  RowVector<S> step_norm_, displacement_norm_, size_norm_;
};

}  // namespace bilevel
