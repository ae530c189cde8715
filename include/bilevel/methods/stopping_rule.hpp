#pragma once
/// \file
/// When an inner solver has converged (docs/methods.md §5.6b). A contrastive estimate divides an
/// inner solution's displacement z^s - z^0 = O(s) by its spacing s, so an error eps left in the
/// inner solution moves the estimate by about eps / ||z^s - z^0|| relative to its size: inner
/// solvers must be judged against that displacement, per sample and layer, never by an absolute
/// tolerance or a fixed iteration count.
///
/// The rule, for every sample j and block (layer) k of a solver whose iterates converge linearly:
/// with s_t = ||Delta_t|| the block's step in iteration t, the distance to the limit is about
/// the sum of the steps still to come. With r the observed contraction, it is
/// ~~~{.unparsed}
///   remaining = r / (1 - r) P,     converged when   remaining <= tau ||z_t - z^0|| + c u b,
/// ~~~
/// u the unit roundoff of the scalar type, c = 64 and b the scale of the iterate's rounding:
/// c u b is the floor below which a step cannot be told from rounding. A solver that iterates on
/// z has b = ||z^0||. One that iterates on the displacement d = z - z^0 (forming every difference
/// f(a + h) - f(a) exactly) rounds relative to d, except for the signal that drives it: s times
/// quantities of the size of z (a loss gradient p - y that is small for a well-fitted sample
/// rounds relative to p and y). So b = ||z_t - z^0|| + s ||z^0||, which shrinks with s and keeps
/// the solver's digits as s -> 0. From the fourth iteration on, P = s_t + s_{t-1} and r = P / (s_{t-2} +
/// s_{t-3}): sums of two steps, so that solvers whose steps alternate (a safeguard that takes
/// every other update back, Barzilai-Borwein steps) are judged by their contraction over two
/// iterations; before that, P = s_t and r the larger of the observed step ratios. A block
/// whose step stays below the floor (no signal reached it, or it sits at rounding) has converged
/// by the floor alone. A sample has converged when all its blocks have in the same iteration; a
/// solver stops when every sample has, or at its cap, which it reports. A sample whose steps or
/// displacement are not finite (a solver that diverged) never converges: it runs to the cap and
/// is reported.

#include <algorithm>
#include <array>
#include <limits>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace bilevel {

/// A solver's relative tolerance tau and its cap on iterations (sweeps for block coordinate
/// descent).
template <Scalar S>
struct stopping_settings {
  S tolerance = S(1e-3);
  Index max_iterations = 100;

  void validate(const char* method) const {
    detail::require(tolerance > 0 && tolerance < 1, method, "tolerance", "in (0, 1)", tolerance);
    detail::require(max_iterations >= 1, method, "max_iterations", ">= 1", max_iterations);
  }
};

/// Where an inner solve starts: the forward pass (cold), or the first-order start of
/// docs/methods.md §5.6b, whose error is O(s^2) of the displacement. A first-order start reads
/// BP's backward pass, so it takes locality from methods whose point that is (PCN, CHL, EP).
enum class inner_start { forward, first_order };

/// The starts' names as the trainer's --inner-start and the Python module's `start` spell them,
/// in the enum's order.
inline constexpr std::array<std::string_view, 2> start_names = {"forward", "first-order"};

inline std::string_view start_name(inner_start start) { return start_names[std::size_t(start)]; }

/// The start `name` spells (start_name's inverse); throws config_error naming `function` for
/// any other name.
inline inner_start parse_start(std::string_view name, std::string_view function) {
  return inner_start(detail::parse_name(start_names, name, function, "start"));
}

namespace detail {

/// The rounding scale b = ||z_t - z^0|| + s ||z^0|| of a solver on the displacement d = z - z^0
/// (file comment), per sample: `signal_weight` is s, the loss's weight over the coupling's. An
/// expression over its arguments, to be assigned.
template <class Displacement, class BaseNorm, Scalar S>
auto displacement_rounding_scale(const Displacement& displacement, S signal_weight,
                                 const BaseNorm& base_norm) {
  return displacement + signal_weight * base_norm;
}

/// Tracks the rule above over the iterations of one solve; one row of per-sample values per
/// block. Its buffers are reused from one solve to the next (no allocation after the first).
/// An active-set solver retires the samples that met the rule (retire_converged) and goes on
/// with the others in the leading positions.
template <Scalar S>
class displacement_rule {
 public:
  static constexpr S roundoff_factor = S(64);

  /// A new solve over `blocks` blocks and `samples` samples.
  /// The buffers only grow: a solve over fewer samples than the last uses their leading part.
  void start(Index blocks, Index samples, S tolerance) {
    tolerance_ = tolerance;
    iteration_ = 0;
    blocks_ = std::size_t(blocks);
    if (history_.size() < blocks_) history_.resize(blocks_);
    for (std::size_t k = 0; k < blocks_; ++k) {
      for (RowVector<S>& step : history_[k]) {
        if (step.size() < samples) step.resize(samples);
        step.head(samples).setZero();
      }
    }
    if (passed_.size() < samples) {
      passed_.resize(samples);
      converged_.resize(samples);
    }
    passed_.setOnes();
    converged_.head(samples).setZero();
    active_ = samples;
  }

  /// Block k's per-sample norms after this iteration: of its step Delta_t, of its displacement
  /// z_t - z^0 and of the scale b its rounding sits at (file comment).
  /// Rows of the active samples (all, unless some were retired).
  void observe(Index block, const RowVectorCRef<S>& step, const RowVectorCRef<S>& displacement,
               const RowVectorCRef<S>& rounding_scale) {
    require(step.size() == active_, "displacement_rule::observe", "samples", active_,
            step.size());
    // steps[0] = s_{t-1}, steps[1] = s_{t-2}, steps[2] = s_{t-3}
    std::array<RowVector<S>, 3>& steps = history_[std::size_t(block)];
    const S unit = std::numeric_limits<S>::epsilon() / 2;
    for (Index j = 0; j < step.size(); ++j) {
      const S floor = roundoff_factor * unit * rounding_scale(j);
      const S s0 = step(j), s1 = steps[0](j), s2 = steps[1](j), s3 = steps[2](j);
      S recent = s0, contraction = std::numeric_limits<S>::infinity();
      if (iteration_ >= 3) {
        recent = s0 + s1;
        if (s2 + s3 > 0) contraction = recent / (s2 + s3);
      } else if (iteration_ >= 1 && s1 > 0) {
        contraction = s0 / s1;
        if (iteration_ == 2 && s2 > 0) contraction = std::max(contraction, s1 / s2);
      }
      // An iterate that overflowed has an infinite floor: it must not pass as still.
      const bool still = s0 <= floor && floor < std::numeric_limits<S>::infinity();
      const bool contracting =
          contraction < 1 &&
          contraction / (1 - contraction) * recent <= tolerance_ * displacement(j) + floor;
      if (!(still || contracting)) passed_(j) = 0;
      steps[2](j) = s2;  // the history moves one iteration on
      steps[1](j) = s1;
      steps[0](j) = s0;
    }
  }

  /// Ends an iteration: records which samples met the rule in every block, and returns whether
  /// all did.
  bool end_iteration() {
    ++iteration_;
    converged_.head(active_) = passed_.head(active_);
    passed_.setOnes();
    return (converged_.head(active_).array() != 0).all();
  }

  /// Moves the active samples that met the rule in the last iteration behind the others and
  /// returns how many stay active, in positions 0 .. count - 1. `swap(p, q)` is called for every
  /// exchange of positions, for the caller to exchange its own per-sample state.
  template <class Swap>
  Index retire_converged(Swap&& swap) {
    Index kept = 0;
    for (Index p = 0; p < active_; ++p) {
      if (converged_(p) != 0) continue;
      if (p != kept) {
        for (std::size_t k = 0; k < blocks_; ++k)
          for (RowVector<S>& step : history_[k]) std::swap(step(p), step(kept));
        std::swap(converged_(p), converged_(kept));
        swap(p, kept);
      }
      ++kept;
    }
    active_ = kept;
    return kept;
  }

  /// Judges active sample j afresh from the next iteration on (its history is dropped, so its
  /// contraction is read from steps taken after this call only, three of them at least): for a
  /// solver that changes how it iterates on j. It counts as not converged.
  void reopen(Index j) {
    for (std::size_t k = 0; k < blocks_; ++k)
      for (RowVector<S>& step : history_[k]) step(j) = 0;
    converged_(j) = 0;
  }

  /// Counts active sample j as not converged in the last iteration, its history kept: for a
  /// solver that asks for more than one iteration meeting the rule.
  void hold(Index j) { converged_(j) = 0; }

  /// Active samples that did not meet the rule in the last iteration.
  Index unconverged() const { return Index((converged_.head(active_).array() == 0).count()); }
  /// Whether sample j met the rule in the last iteration.
  bool converged(Index j) const { return converged_(j) != 0; }

 private:
  S tolerance_ = S(1e-3);
  Index iteration_ = 0;
  std::size_t blocks_ = 0;
  Index active_ = 0;  ///< samples not retired, in the leading positions
  std::vector<std::array<RowVector<S>, 3>> history_;
  RowVector<S> passed_, converged_;
};

}  // namespace detail
}  // namespace bilevel
