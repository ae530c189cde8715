#pragma once
/// \file
/// When an inner solver has converged (docs/methods.md §5.6b). A contrastive estimate divides an
/// inner solution's displacement z^s - z^0 = O(s) by its spacing s, so an error eps left in the
/// inner solution moves the estimate by about eps / ||z^s - z^0|| relative to its size: inner
/// solvers must be judged against that displacement, per sample and layer, never by an absolute
/// tolerance or a fixed iteration count.
///
/// The rule, for every sample j and block (layer) k, after iteration t >= 2 of a solver whose
/// iterates converge linearly: with Delta_t the block's step in iteration t and q the observed
/// ratio of successive steps (the larger of the last two ratios, for solvers whose steps do not
/// shrink monotonically), the distance to the limit is about q / (1 - q) ||Delta_t||, and the
/// block has converged when
/// ~~~{.unparsed}
///   q / (1 - q) ||Delta_t|| <= tau ||z_t - z^0|| + c u ||z^0||      (q < 1),
/// ~~~
/// u the unit roundoff of the scalar type and c = 16: the floor below which a step in z cannot be
/// told from rounding. A block that does not move beyond that floor (no signal reached it) has
/// converged by the floor alone. A sample has converged when all its blocks have in the same
/// iteration; a solver stops when every sample has, or at its cap, which it reports.

#include <algorithm>
#include <limits>
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

namespace detail {

/// Tracks the rule above over the iterations of one solve; one row of per-sample values per
/// block. Its buffers are reused from one solve to the next (no allocation after the first).
template <Scalar S>
class displacement_rule {
 public:
  static constexpr S roundoff_factor = S(16);

  /// A new solve over `blocks` blocks and `samples` samples.
  void start(Index blocks, Index samples, S tolerance) {
    tolerance_ = tolerance;
    iteration_ = 0;
    previous_step_.resize(std::size_t(blocks));
    last_ratio_.resize(std::size_t(blocks));
    for (std::size_t k = 0; k < previous_step_.size(); ++k) {
      previous_step_[k].setZero(samples);
      last_ratio_[k].setZero(samples);
    }
    passed_.setOnes(samples);
    converged_.setZero(samples);
  }

  /// Block k's per-sample norms after this iteration: of its step Delta_t, of its displacement
  /// z_t - z^0 and of its start z^0.
  void observe(Index block, const RowVector<S>& step, const RowVector<S>& displacement,
               const RowVector<S>& base) {
    const auto k = std::size_t(block);
    RowVector<S>& previous = previous_step_[k];
    RowVector<S>& last_ratio = last_ratio_[k];
    const S unit = std::numeric_limits<S>::epsilon() / 2;
    for (Index j = 0; j < step.size(); ++j) {
      const S floor = roundoff_factor * unit * base(j);
      const S ratio = previous(j) > 0 ? step(j) / previous(j) : std::numeric_limits<S>::infinity();
      const S q = iteration_ >= 2 ? std::max(ratio, last_ratio(j)) : ratio;
      const bool still = step(j) <= floor;
      const bool contracting =
          iteration_ >= 1 && q < 1 && q / (1 - q) * step(j) <= tolerance_ * displacement(j) + floor;
      if (!(still || contracting)) passed_(j) = 0;
      last_ratio(j) = ratio;
      previous(j) = step(j);
    }
  }

  /// Ends an iteration: records which samples met the rule in every block, and returns whether
  /// all did.
  bool end_iteration() {
    ++iteration_;
    converged_ = passed_;
    passed_.setOnes();
    return (converged_.array() != 0).all();
  }

  /// Samples that did not meet the rule in the last iteration.
  Index unconverged() const { return Index((converged_.array() == 0).count()); }
  /// Whether sample j met the rule in the last iteration.
  bool converged(Index j) const { return converged_(j) != 0; }

 private:
  S tolerance_ = S(1e-3);
  Index iteration_ = 0;
  std::vector<RowVector<S>> previous_step_, last_ratio_;
  RowVector<S> passed_, converged_;
};

}  // namespace detail
}  // namespace bilevel
