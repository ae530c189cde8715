#pragma once
/// \file
/// Predictive coding networks (PCN; Whittington & Bogacz 2017) and their zero-divergence
/// schedule Z-IL (Song et al. 2020), docs/methods.md §5.4.
///
/// Energy per sample, with the penalizer coupling (§3) and a spacing s on the loss (§5.6b):
/// ~~~{.unparsed}
///   F_s(z) = sum_{k<L} 1/2 ||z_k - f_k(W_k z_{k-1} + b_k)||^2 + s l(f_L(W_L z_{L-1} + b_L), y),
/// ~~~
/// z_0 = x; only the hidden z move (couplings/penalizer_energy.hpp, w = 1 and c = s). s = 1 is
/// the classic method; s -> 0 makes the estimate BP's, with an error O(s).
///
/// Notation: eps_k = z_k - f(a_k) (k < L), and one pre-activation signal per layer
/// ~~~{.unparsed}
///   sig_k = -J_f(a_k)^T eps_k   (k < L),      sig_L = s J_{f_L}(a_L)^T dl/dz_L,
/// ~~~
/// so that dF_s/dz_k = eps_k + W_{k+1}^T sig_{k+1} for every hidden k, and the estimate (to
/// descend) is dW_k = sig_k z_{k-1}^T / (s B), db_k = sum_cols(sig_k) / (s B): each layer reads
/// only its own error and input (a local rule). At the equilibrium of inference eps_k -> -s g_k
/// and sig_k -> s delta_k, with g_k and delta_k BP's errors at z_k and a_k (§5.4).
///
/// Inference starts from the forward pass (or, as an option, from the first-order start of
/// §5.6b, which needs BP's backward pass and so gives up locality) and takes steps
/// z_k <- z_k - rate dF_s/dz_k, all hidden k at once, on the displacements d = z - z^0. Each
/// sample stops when §5.6b's rule holds for all its layers (methods/stopping_rule.hpp; then it
/// stays where it is), and the report counts the samples still moving at the cap.
///
/// A fixed rate converges only below 2 over F's largest curvature, which grows with the
/// weights: past it a sample settles into a two-cycle (measured on LeNet-5 after an epoch of
/// Fashion-MNIST: F alternating between 1.4275 and 1.4401 to the cap). So a sample whose step
/// climbed F (beyond its rounding) without being shorter than the one before, the signature of
/// overshooting rather than of a rise on the way down, halves its own rate, at most
/// `rate_halvings` times, and the rule judges it afresh from then on. A sample that never
/// climbs takes the fixed-rate steps bit for bit; the halvings are bounded, so the rates do not
/// form a summable sequence that would stall short of the equilibrium (below).
///
/// By default the steps are mixed (`pcn_inference::anderson`, below); as options they are plain
/// (`pcn_inference::plain`, the classic dynamics step by step) or carry Nesterov momentum
/// (`pcn_inference::momentum`). With momentum each unit keeps its own last step, and a sample
/// restarts its momentum where a step climbs (O'Donoghue & Candes's gradient restart, one sum per
/// sample as the stopping rule reads). The rule is sound for steps that contract steadily, which
/// momentum's are not, so a sample that meets it under momentum goes on with plain steps and
/// retires once those have met it three times in a row. On the smooth MNIST nets measured it
/// reaches the plain steps' equilibrium in about half the steps; on a nonconvex energy it can coast
/// past the minimiser next to the forward pass (§5.4), so it is off by default.
///
/// Z-IL (`pcn<S>::zil()`): rate 1 and layer k's gradient taken at step t = L - k (the output
/// layer at t = 0), which equals BP exactly.
///
/// The defaults are this library's choice (§7: neither paper's code ships MNIST settings): rate 0.1
/// (half the Euler step of Whittington & Bogacz's XOR code: 0.2 converges twice as fast on the
/// paper's MLP 784-256-128-64-10 ReLU at Glorot init, where 0.4 diverges, but diverges on nets with
/// larger weights: a fixed rate must stay below 2 over F's largest curvature), Anderson mixing over
/// 5 steps, tolerance 1e-4 and a cap of 5000 steps, cold start. Gradient descent at a fixed rate
/// converges linearly where F is smooth, so the rule's estimate is sound there (measured: within
/// 1.03 times the tolerance); a minimiser on a kink of a piecewise-linear pair (ReLU at s >= 0.01)
/// makes fixed-rate steps chatter without converging, which the report shows. Shrinking the rate
/// without bound where the gradient turns back is no cure: with a summable sequence of steps the
/// iterate stalls short of a stationary point while the rule, seeing steps shrink, calls it
/// converged (measured at s = 1 on MNIST: stopped 11% of the estimate away from where the same
/// steps continued). MAC's Z-step (methods/mac.hpp) minimises the same F and converges.
///
/// Anderson mixing corrects each plain step by a least-squares fit over the sample's last
/// steps (§5.4), which sees the whole spectrum of F's curvature where a rate sees only its
/// largest value: on the smooth MNIST nets measured a third of the plain steps or fewer to the
/// same equilibrium. A mixed point that raised F falls back to the plain step, so it
/// descends and stays in the forward pass's basin where momentum left it; plain steps certify
/// convergence as with momentum.
///
/// Papers: J. Whittington, R. Bogacz, Neural Computation 29(5), 2017; Y. Song et al., "Can the
/// Brain Do Backpropagation? Exact Implementation of Backpropagation in Predictive Coding
/// Networks", NeurIPS 2020; D. G. Anderson, J. ACM 12(4), 1965, and H. F. Walker, P. Ni, SIAM
/// J. Numer. Anal. 49(4), 2011 (Anderson mixing).

#include <Eigen/Cholesky>
#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../couplings/penalizer_energy.hpp"
#include "../program.hpp"
#include "active_set.hpp"
#include "method.hpp"
#include "stopping_rule.hpp"

namespace bilevel {

/// How PCN's inference moves: plain fixed-rate gradient steps, with Nesterov momentum, or with
/// Anderson mixing (docs/methods.md §5.4).
enum class pcn_inference { plain, momentum, anderson };

/// The dynamics' names as the trainer's --inference and the Python module's key spell them,
/// in the enum's order.
inline constexpr std::array<std::string_view, 3> inference_names = {"plain", "momentum",
                                                                     "anderson"};

inline std::string_view inference_name(pcn_inference inference) {
  return inference_names[std::size_t(inference)];
}

/// The dynamics `name` spells (inference_name's inverse); throws config_error naming `function`
/// for any other name.
inline pcn_inference parse_inference(std::string_view name, std::string_view function) {
  return pcn_inference(detail::parse_name(inference_names, name, function, "inference"));
}

/// Predictive coding networks, and Z-IL through pcn::zil() (docs/methods.md §5.4); a
/// GradientMethod.
template <Scalar S>
class pcn {
 public:
  struct settings {
    /// s: the weight of the loss in F_s; the estimate is divided by it (1: the classic PCN).
    S spacing = S(1);
    /// Gradient-descent step on the hidden z.
    S inference_rate = S(0.1);
    /// plain: fixed-rate gradient descent, the classic dynamics step by step.
    /// momentum: Nesterov momentum, restarted per sample where it would climb and handed over to
    /// plain steps to certify convergence; on the smooth MNIST nets measured the same
    /// equilibrium in about half the steps, but on a nonconvex energy it can carry a sample past
    /// the minimiser next to the forward pass, which plain steps find. anderson: each plain step
    /// corrected by a least-squares fit over the sample's last `anderson_memory` steps, a mixed
    /// point that raised F replaced by the plain step, certified by plain steps as with
    /// momentum (the default: a third of the plain steps or fewer on the nets measured). Both
    /// read sums over a sample's units, as the stopping rule does, so neither is local; the
    /// weight update stays local under every dynamics (§5.4).
    pcn_inference inference = pcn_inference::anderson;
    /// The steps Anderson mixing fits over (1 to 8).
    Index anderson_memory = 5;
    /// The stopping rule of §5.6b (tolerance, cap on inference steps). Ignored by Z-IL, whose
    /// schedule fixes L - 1 steps: by then every layer's gradient has been taken.
    stopping_settings<S> stopping = {S(1e-4), 5000};
    /// How many times a sample's rate may be halved where its plain step climbed F without
    /// shrinking (a two-cycle of too large a rate; 0: the fixed rate throughout), or under
    /// Anderson mixing where its plain step climbed. Not with momentum, whose restarts handle
    /// climbing steps, nor Z-IL.
    Index rate_halvings = 4;
    /// Where inference starts: the forward pass, or the first-order start of §5.6b. The
    /// forward pass by default: the first-order start needs BP's backward pass, and locality is
    /// PCN's point.
    inner_start start = inner_start::forward;
    /// Z-IL: layer k's gradient is taken at inference step t = L - k instead of at the end.
    /// With inference_rate = 1 this is exactly BP; with any other rate it is not.
    bool zero_divergence = false;
  };

  pcn() : pcn(settings{}) {}
  explicit pcn(settings config) : settings_(config) {
    detail::require_positive_finite("pcn", "spacing", settings_.spacing);
    detail::require_positive_finite("pcn", "inference_rate", settings_.inference_rate);
    settings_.stopping.validate("pcn");
    detail::require(settings_.rate_halvings >= 0, "pcn", "rate_halvings", ">= 0",
                    settings_.rate_halvings);
    detail::require(settings_.inference == pcn_inference::plain || !settings_.zero_divergence,
                    "pcn", "inference",
                    "plain with zero_divergence (Z-IL's schedule is of plain steps)",
                    inference_name(settings_.inference));
    detail::require(settings_.anderson_memory >= 1 && settings_.anderson_memory <= max_memory,
                    "pcn", "anderson_memory",
                    "in [1, " + std::to_string(max_memory) + "]", settings_.anderson_memory);
  }

  /// Z-IL as Song et al. define it: rate 1 and the zero-divergence schedule, equal to BP.
  static pcn zil() {
    settings config;
    config.inference_rate = S(1);
    config.inference = pcn_inference::plain;
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
  /// batch mean of F_s / s and inner_residual that of the per-sample norm of dF_s/dz / s (all
  /// hidden layers stacked), both at the final inference state; unconverged counts the samples
  /// that reached the cap before the stopping rule held.
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    static_assert(std::is_same_v<typename Program::scalar_type, S>,
                  "pcn<S>::gradient needs a program over the same scalar type S");
    constexpr const char* function = "pcn::gradient";
    detail::require_batch<Program, S>(net, x, y, function);
    if (gradient.size() != net.parameter_count()) gradient.resize(net.parameter_count());

    const Index L = net.depth();
    energy_.start(net, x, S(1), settings_.spacing);
    const auto frozen = energy_.frozen(net);  // the weights stay fixed through the inference
    energy_.size(net, state_);
    step_report report;
    report.loss =
        detail::mean_loss<Program, S>(net, energy_.forward().z.back(), y, losses_);
    report.correct = count_correct<S>(energy_.forward().z.back(), y);

    if (settings_.start == inner_start::first_order && !settings_.zero_divergence)
      energy_.first_order_start(net, y, state_);
    else
      energy_.cold_start(state_);
    energy_.evaluate(net, y, state_, true);

    if (settings_.zero_divergence)
      report.inner_iterations = zero_divergence_inference(net, y, gradient);
    else
      report.inner_iterations = inference(net, y, report);
    if (!settings_.zero_divergence) {
      const auto& z = energy_.states(state_);
      for (Index i = 0; i < L; ++i) energy_.layer_estimate(net, state_, z, i, gradient);
    }
    const S inverse_spacing = S(1) / settings_.spacing;
    report.inner_energy = double(inverse_spacing * state_.energy.mean());
    report.inner_residual = double(inverse_spacing * state_.squared_gradient.cwiseSqrt().mean());
    return report;
  }

  /// The final inference state of the last batch: z_0 = x, the inferred hidden z_1..z_{L-1},
  /// and the output z_L = f_L(a_L) they produce.
  const std::vector<Matrix<S>>& state() { return energy_.states(state_); }

 private:
  /// Inference on F_s until every sample meets the stopping rule or the cap; returns the number
  /// of steps taken. A sample that met the rule is retired (it stays where it is) and the steps
  /// go on over the others, gathered into the leading columns (methods/active_set.hpp).
  template <class Program>
  Index inference(const Program& net, const MatrixCRef<S>& y, step_report& report) {
    const Index L = net.depth(), B = state_.energy.size();
    if (L == 1) return 0;
    const bool accelerated = settings_.inference == pcn_inference::momentum;
    const bool mixing = settings_.inference == pcn_inference::anderson;
    rule_.start(L - 1, B, settings_.stopping.tolerance);
    order_.start(y);
    step_norms_.resize(std::size_t(L));
    for (RowVector<S>* row : {&displacement_, &rounding_}) row->resize(B);
    for (Index k = 1; k < L; ++k) step_norms_[std::size_t(k)].resize(B);
    if (accelerated)
      start_momentum(L, B);
    else if (mixing)
      start_mixing(L, B);
    else
      start_rates(B);
    // The rule judges the iterates: with momentum, x (iterate_), not the extrapolated point.
    const std::vector<Matrix<S>>& iterate = accelerated ? iterate_ : state_.d;
    Index steps = 0, active = B;
    while (steps < settings_.stopping.max_iterations) {
      if (accelerated)
        momentum_step(L, active);
      else if (mixing)
        mixing_step(L, active);
      else
        gradient_step(L, active);
      energy_.evaluate(net, order_.labels(active), state_, true);
      ++steps;
      for (Index k = 1; k < L; ++k) {
        const auto u = std::size_t(k);
        displacement_.head(active) = iterate[u].leftCols(active).colwise().norm();
        rounding_.head(active) = detail::displacement_rounding_scale(
            displacement_.head(active), energy_.spacing(), energy_.base_norm(k).head(active));
        rule_.observe(k - 1, step_norms_[u].head(active), displacement_.head(active),
                      rounding_.head(active));
      }
      bool done = rule_.end_iteration();
      if (accelerated || mixing)
        done = certify_plainly(active) == 0 && done;
      else
        done = slow_down_overshooting(active) == 0 && done;
      if (done) break;
      active = rule_.retire_converged([this](Index p, Index q) { swap_samples(p, q); });
      energy_.set_width(active);
    }
    report.unconverged = rule_.unconverged();
    order_.restore([this](Index p, Index q) { swap_samples(p, q); });
    energy_.set_width(B);
    if (accelerated && report.unconverged > 0) {
      // Samples left at the cap were last evaluated at an extrapolated point; the estimate is
      // read at their iterates (every other sample's extrapolated point is its iterate).
      for (Index k = 1; k < L; ++k) state_.d[std::size_t(k)] = iterate_[std::size_t(k)];
      energy_.evaluate(net, y, state_, true);
    }
    return steps;
  }

  /// z_k <- z_k - rate_j dF_s/dz_k for every hidden k, on the first `active` samples.
  void gradient_step(Index L, Index active) {
    const auto rate = rate_.head(active);
    auto squared_step = squared_step_.head(active);
    squared_step.setZero();
    for (Index k = 1; k < L; ++k) {
      const auto u = std::size_t(k);
      auto gradient = state_.gradient[u].leftCols(active);
      step_norms_[u].head(active) = rate.cwiseProduct(gradient.colwise().norm());
      state_.d[u].leftCols(active) -= gradient * rate.asDiagonal();
      squared_step += step_norms_[u].head(active).cwiseAbs2();
    }
  }

  /// Every sample at the configured rate, with F at the start (state_.energy) as its last
  /// value and no last step.
  void start_rates(Index B) {
    for (RowVector<S>* row : {&rate_, &last_energy_, &squared_step_, &last_squared_step_})
      row->resize(B);
    rate_.setConstant(settings_.inference_rate);
    last_energy_ = state_.energy;
    last_squared_step_.setConstant(std::numeric_limits<S>::infinity());
    halvings_.setZero(B);
    just_halved_.setZero(B);
  }

  /// Squared step lengths within this factor count as equal when overshooting is judged: a
  /// two-cycle's steps are equal, and rounding must not decide whether it is caught.
  static constexpr double same_length = 0.998;

  /// After a plain step evaluated at the new state: a sample whose F rose by more than its
  /// rounding, in a step not shorter than the one before (same_length), overshot (a fixed rate
  /// above 2 over the curvature), and halves its rate if it may still (rate_halvings). A rise
  /// in a shorter step is a descent that is still settling, and is left alone. The rule judges
  /// a slowed sample afresh, from the second step at its new rate: the first one jumps from the
  /// cycle to near its middle, and a history that started with it would read the slow steps
  /// after it as a fast contraction (measured on tanh nets: estimates 4 and 13 times the
  /// tolerance off). Returns how many samples the rule judges afresh.
  Index slow_down_overshooting(Index active) {
    constexpr S margin = S(64) * std::numeric_limits<S>::epsilon();
    Index reopened = 0;
    for (Index j = 0; j < active; ++j) {
      const S energy = state_.energy(j);
      const bool climbed = energy - last_energy_(j) > margin * std::abs(last_energy_(j));
      const bool shorter = squared_step_(j) < S(same_length) * last_squared_step_(j);
      last_energy_(j) = energy;
      last_squared_step_(j) = squared_step_(j);
      const bool halve = climbed && !shorter && halvings_(j) < settings_.rate_halvings;
      if (!halve && just_halved_(j) == 0) continue;
      if (halve) {
        rate_(j) /= S(2);
        ++halvings_(j);
      }
      just_halved_(j) = halve ? 1 : 0;
      rule_.reopen(j);
      ++reopened;
    }
    return reopened;
  }

  /// Momentum state for a solve from the current point: the iterate x = the start, t = 1.
  void start_momentum(Index L, Index B) {
    iterate_.resize(std::size_t(L));
    step_.resize(std::size_t(L));
    for (Index k = 1; k < L; ++k) {
      const auto u = std::size_t(k);
      iterate_[u] = state_.d[u];
      step_[u].resize(state_.d[u].rows(), B);
    }
    for (RowVector<S>* row : {&momentum_time_, &momentum_, &uphill_}) row->resize(B);
    momentum_time_.setOnes();
    plain_.resize(B);
    plain_.setZero();
  }

  /// Consecutive iterations of plain steps in which a sample must meet the stopping rule to
  /// retire. The rule reads the contraction from the last four steps; after the hand-over from
  /// momentum it still grows for a few iterations, as the components momentum left behind die
  /// out at different rates, and one iteration can pass too early (measured: 6x the tolerance
  /// on a tanh net at s = 0.1 with one, within the plain solve's own error with three).
  static constexpr Index certifying_passes = 3;

  /// The stopping rule is sound for fixed-rate descent (steps that contract steadily), not for
  /// momentum, whose steps rise and fall between restarts and can look converged early: a sample
  /// that met it under momentum goes on with plain steps from there, judged afresh, and retires
  /// once those have met it certifying_passes times in a row. Returns how many samples that met
  /// the rule in this iteration were held back.
  Index certify_plainly(Index active) {
    Index held = 0;
    for (Index j = 0; j < active; ++j) {
      Index& phase = plain_(j);  // 0: momentum or mixing; p > 0: plain, p - 1 passes in a row
      if (!rule_.converged(j)) {
        if (phase > 0) phase = 1;
        continue;
      }
      if (phase == 0)
        rule_.reopen(j);
      else if (phase < certifying_passes)
        rule_.hold(j);
      else
        continue;
      ++phase;
      ++held;
    }
    return held;
  }

  /// One accelerated step (Nesterov, with O'Donoghue & Candes's gradient restart; §5.4), on the
  /// first `active` samples. The gradient was taken at the extrapolated point y (state_.d): the
  /// iterate moves to x' = y - rate dF_s/dz(y); a sample whose step climbs,
  /// <dF_s/dz(y), x' - x> > 0, restarts (t = 1, no momentum); the next point is
  /// y' = x' + m (x' - x), m = (t - 1) / t', t' = (1 + sqrt(1 + 4 t^2)) / 2.
  void momentum_step(Index L, Index active) {
    const S rate = settings_.inference_rate;
    auto uphill = uphill_.head(active);
    uphill.setZero();
    for (Index k = 1; k < L; ++k) {
      const auto u = std::size_t(k);
      const auto gradient = state_.gradient[u].leftCols(active);
      auto step = step_[u].leftCols(active);
      auto x = iterate_[u].leftCols(active);
      step = state_.d[u].leftCols(active) - rate * gradient - x;
      x += step;
      step_norms_[u].head(active) = step.colwise().norm();
      uphill += gradient.cwiseProduct(step).colwise().sum();
    }
    for (Index j = 0; j < active; ++j) {
      const S t = momentum_time_(j);
      const S next = (S(1) + std::sqrt(S(1) + S(4) * t * t)) / S(2);
      const bool restart = uphill(j) > 0 || plain_(j) != 0;
      momentum_(j) = restart ? S(0) : (t - S(1)) / next;
      momentum_time_(j) = restart ? S(1) : next;
    }
    for (Index k = 1; k < L; ++k) {
      const auto u = std::size_t(k);
      state_.d[u].leftCols(active) =
          iterate_[u].leftCols(active) +
          step_[u].leftCols(active) * momentum_.head(active).asDiagonal();
    }
  }

  /// Mixing state for a solve from the current point: no previous point, no history.
  void start_mixing(Index L, Index B) {
    const Index memory = settings_.anderson_memory;
    previous_point_.resize(std::size_t(L));
    previous_residual_.resize(std::size_t(L));
    point_changes_.resize(std::size_t(memory));
    residual_changes_.resize(std::size_t(memory));
    for (Index i = 0; i < memory; ++i) {
      point_changes_[std::size_t(i)].resize(std::size_t(L));
      residual_changes_[std::size_t(i)].resize(std::size_t(L));
    }
    for (Index k = 1; k < L; ++k) {
      const auto u = std::size_t(k);
      const Index rows = state_.d[u].rows();
      previous_point_[u].resize(rows, B);
      previous_residual_[u].resize(rows, B);
      for (Index i = 0; i < memory; ++i) {
        point_changes_[std::size_t(i)][u].resize(rows, B);
        residual_changes_[std::size_t(i)][u].resize(rows, B);
      }
    }
    gram_.resize(memory * memory, B);
    last_energy_.resize(B);
    rate_.setConstant(B, settings_.inference_rate);
    halvings_.setZero(B);
    plain_.setZero(B);
    history_.setConstant(B, -1);  // -1: no previous point yet
    mixed_.setZero(B);
    newest_ = 0;
  }

  /// One mixing step (Anderson acceleration of the plain map z -> z + r(z), r = -rate dF_s/dz;
  /// §5.4) on the first `active` samples, whose gradient was taken at the current point p. A
  /// sample whose p raised F above its previous point's goes back to the plain step from there
  /// and forgets its history: if p was mixed, at its rate; if p was that plain step itself (a
  /// rate above 2 over the curvature), at half its rate, at most `rate_halvings` times, and the
  /// rule judges it afresh (a plain step below that bound lowers F). Otherwise the pair of changes
  /// (p - p_prev, r - r_prev) enters its history, and with c such pairs the next point is
  /// p + r - sum_i gamma_i (dp_i + dr_i), gamma minimising ||r - sum_i gamma_i dr_i|| over all
  /// hidden layers (the secant fit that predicts where r vanishes). Samples in their plain
  /// phase (certify_plainly) take the plain step.
  void mixing_step(Index L, Index active) {
    constexpr S margin = S(64) * std::numeric_limits<S>::epsilon();
    const Index memory = settings_.anderson_memory;
    newest_ = (newest_ + 1) % memory;
    for (Index j = 0; j < active; ++j) {
      const S energy = state_.energy(j), rate = rate_(j);
      const bool climbed =
          history_(j) >= 0 && energy - last_energy_(j) > margin * std::abs(last_energy_(j));
      const bool mixed = mixed_(j) != 0;
      mixed_(j) = 0;
      if (climbed && (mixed || halvings_(j) < settings_.rate_halvings)) {
        history_(j) = 0;
        if (!mixed) {
          rate_(j) /= S(2);
          ++halvings_(j);
          rule_.reopen(j);
        }
        for (Index k = 1; k < L; ++k) {
          const auto u = std::size_t(k);
          if (!mixed) previous_residual_[u].col(j) /= S(2);
          state_.d[u].col(j) = previous_point_[u].col(j) + previous_residual_[u].col(j);
          step_norms_[u](j) = previous_residual_[u].col(j).norm();
        }
        continue;
      }
      if (history_(j) >= 0 && plain_(j) == 0) {
        for (Index k = 1; k < L; ++k) {
          const auto u = std::size_t(k);
          point_changes_[std::size_t(newest_)][u].col(j) =
              state_.d[u].col(j) - previous_point_[u].col(j);
          residual_changes_[std::size_t(newest_)][u].col(j) =
              -rate * state_.gradient[u].col(j) - previous_residual_[u].col(j);
        }
        history_(j) = std::min(history_(j) + 1, memory);
        extend_gram(L, j);
      } else if (history_(j) < 0) {
        history_(j) = 0;
      }
      for (Index k = 1; k < L; ++k) {
        const auto u = std::size_t(k);
        previous_point_[u].col(j) = state_.d[u].col(j);
        previous_residual_[u].col(j) = -rate * state_.gradient[u].col(j);
      }
      last_energy_(j) = energy;
      const Index count = plain_(j) == 0 ? history_(j) : 0;
      if (count > 0)
        mix(L, j, count);
      else
        for (Index k = 1; k < L; ++k)
          state_.d[std::size_t(k)].col(j) += previous_residual_[std::size_t(k)].col(j);
      for (Index k = 1; k < L; ++k) {
        const auto u = std::size_t(k);
        step_norms_[u](j) = (state_.d[u].col(j) - previous_point_[u].col(j)).norm();
      }
      mixed_(j) = count > 0 ? 1 : 0;
    }
  }

  /// The history slot of sample j's i-th newest pair of changes.
  std::size_t slot(Index i) const {
    const Index memory = settings_.anderson_memory;
    return std::size_t((newest_ - i + memory) % memory);
  }

  /// Stores the products of sample j's newest residual change with each change it holds
  /// (itself included), in double over all hidden layers. The products among older changes
  /// are kept from the steps that stored them: a step computes one row of the Gram matrix.
  void extend_gram(Index L, Index j) {
    const Index memory = settings_.anderson_memory, newest = Index(slot(0));
    for (Index b = 0; b < history_(j); ++b) {
      double product = 0;
      for (Index k = 1; k < L; ++k) {
        const auto u = std::size_t(k);
        product += residual_changes_[slot(0)][u].col(j).template cast<double>().dot(
            residual_changes_[slot(b)][u].col(j).template cast<double>());
      }
      gram_(Index(slot(b)) * memory + newest, j) = product;
    }
  }

  /// Sets sample j's point to p + r - sum_i gamma_i (dp_i + dr_i) over its `count` newest pairs
  /// (mixing_step), gamma from the normal equations of the fit, in double and damped by a
  /// relative 1e-10 of their diagonal so that nearly dependent changes do not blow gamma up.
  void mix(Index L, Index j, Index count) {
    const Index memory = settings_.anderson_memory;
    Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, 0, max_memory, max_memory> gram(count,
                                                                                           count);
    Eigen::Matrix<double, Eigen::Dynamic, 1, 0, max_memory, 1> fit(count), gamma(count);
    for (Index a = 0; a < count; ++a)
      for (Index b = 0; b <= a; ++b)
        gram(a, b) = gram_(Index(slot(a)) * memory + Index(slot(b)), j);
    gram.template triangularView<Eigen::StrictlyUpper>() = gram.transpose();
    fit.setZero();
    for (Index k = 1; k < L; ++k) {
      const auto u = std::size_t(k);
      for (Index a = 0; a < count; ++a)
        fit(a) += residual_changes_[slot(a)][u].col(j).template cast<double>().dot(
            previous_residual_[u].col(j).template cast<double>());
    }
    gram.diagonal() *= 1 + 1e-10;
    gamma = gram.ldlt().solve(fit);
    for (Index k = 1; k < L; ++k) {
      const auto u = std::size_t(k);
      auto d = state_.d[u].col(j);
      d += previous_residual_[u].col(j);
      for (Index a = 0; a < count; ++a)
        d -= S(gamma(a)) *
             (point_changes_[slot(a)][u].col(j) + residual_changes_[slot(a)][u].col(j));
    }
  }

  /// The most pairs of changes a mixing history keeps.
  static constexpr int max_memory = 8;

  /// Exchanges samples p and q in the inference state and the energy's per-sample buffers, and
  /// records it in order_ (which also exchanges their labels).
  void swap_samples(Index p, Index q) {
    order_.swap(p, q);
    energy_.swap_samples(p, q, {&state_});
    if (settings_.inference == pcn_inference::anderson) {
      swap_columns(previous_point_, p, q);
      swap_columns(previous_residual_, p, q);
      for (auto& changes : point_changes_) swap_columns(changes, p, q);
      for (auto& changes : residual_changes_) swap_columns(changes, p, q);
      gram_.col(p).swap(gram_.col(q));
      std::swap(last_energy_(p), last_energy_(q));
      std::swap(rate_(p), rate_(q));
      std::swap(halvings_(p), halvings_(q));
      std::swap(plain_(p), plain_(q));
      std::swap(history_(p), history_(q));
      std::swap(mixed_(p), mixed_(q));
      return;
    }
    if (settings_.inference == pcn_inference::plain) {
      for (RowVector<S>* row : {&rate_, &last_energy_, &squared_step_, &last_squared_step_})
        std::swap((*row)(p), (*row)(q));
      std::swap(halvings_(p), halvings_(q));
      std::swap(just_halved_(p), just_halved_(q));
      return;
    }
    swap_columns(iterate_, p, q);
    swap_columns(step_, p, q);
    std::swap(momentum_time_(p), momentum_time_(q));
    std::swap(plain_(p), plain_(q));
  }

  /// Exchanges columns p and q of every layer's matrix in a per-layer buffer.
  static void swap_columns(std::vector<Matrix<S>>& per_layer, Index p, Index q) {
    for (Matrix<S>& m : per_layer)  // the input layer's entry is empty
      if (m.size() > 0) m.col(p).swap(m.col(q));
  }

  /// Z-IL (§5.4): layer k (1-based) is read at t = L - k, when the error sent down from the
  /// output has just reached z_k and nothing below it has moved yet, so a_k and z_{k-1} are
  /// still the forward pass; at rate 1 the step moved z_k by exactly -s W_{k+1}^T delta_{k+1},
  /// which makes the local signal sig_k equal s delta_k. Every z_k steps from the same state
  /// (synchronous). Returns the L - 1 steps taken.
  template <class Program>
  Index zero_divergence_inference(const Program& net, const MatrixCRef<S>& y,
                                  Vector<S>& gradient) {
    const Index L = net.depth();
    const S rate = settings_.inference_rate;
    for (Index t = 0;; ++t) {
      const auto& z = energy_.states(state_);
      energy_.layer_estimate(net, state_, z, L - 1 - t, gradient);
      if (t == L - 1) return t;
      for (Index k = 1; k < L; ++k)
        state_.d[std::size_t(k)] -= rate * state_.gradient[std::size_t(k)];
      energy_.evaluate(net, y, state_, true);
    }
  }

  settings settings_;
  detail::penalizer_energy<S> energy_;
  typename detail::penalizer_energy<S>::point state_;
  detail::displacement_rule<S> rule_;
  RowVector<S> displacement_, rounding_, losses_;
  detail::sample_order<S> order_;
  std::vector<RowVector<S>> step_norms_;
  // Accelerated inference: the iterates x (state_.d holds the extrapolated points), their last
  // steps, and per sample t, the momentum m, <dF_s/dz, step> and its phase (certify_plainly).
  std::vector<Matrix<S>> iterate_, step_;
  RowVector<S> momentum_time_, momentum_, uphill_;
  Eigen::Matrix<Index, 1, Eigen::Dynamic> plain_;
  // Plain inference: per sample its rate, F and squared step (all layers) of the last
  // iteration, this iteration's squared step, the halvings taken, and whether the last step was
  // the first at a halved rate (slow_down_overshooting).
  RowVector<S> rate_, last_energy_, squared_step_, last_squared_step_;
  Eigen::Matrix<Index, 1, Eigen::Dynamic> halvings_, just_halved_;
  // Mixed inference: per layer the last accepted point and its residual -rate dF_s/dz, and
  // per history slot and layer the changes of both between accepted points; per sample the
  // products of its residual changes (gram_, entry p * memory + q: slot p's change, stored
  // before or with slot q's, times slot q's), the pairs held (-1: none yet) and whether its
  // current point was mixed. last_energy_ holds F at the last accepted point, rate_ and
  // halvings_ the sample's rate, plain_ the phase (certify_plainly).
  std::vector<Matrix<S>> previous_point_, previous_residual_;
  std::vector<std::vector<Matrix<S>>> point_changes_, residual_changes_;
  Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic> gram_;
  Eigen::Matrix<Index, 1, Eigen::Dynamic> history_, mixed_;
  Index newest_ = 0;
};

}  // namespace bilevel
