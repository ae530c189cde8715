#pragma once
/// \file
/// How a method's weight steps see a batch that may be split over several processes. A
/// block-coordinate method (MAC, LPOM, FLN, AltMin) infers its coordinates sample by sample,
/// which needs only the samples at hand, but its weight steps minimise batch means: their
/// gradients and the objective values their line searches compare must be means over the whole
/// batch. A batch reduction turns means over the samples at hand into those, identically on
/// every process, so that every process takes the same weight step (docs/methods.md §1: energies
/// and inference are per sample, parameter gradients and reported losses are batch means).
///
/// `whole_batch` is the reduction of a batch that is entirely here (nothing to do);
/// `bilevel::mpi::shard_mean` (bilevel/mpi/data_parallel.hpp) is the one for a batch split
/// over MPI processes.

#include <concepts>
#include <span>

#include "../core/types.hpp"
#include "method.hpp"

namespace bilevel {

/// `reduction.mean(values)` replaces, in place, values that are means over this process's
/// samples by the means over the whole batch, the same on every process. It is a collective
/// operation: every process must call it the same number of times with spans of equal length.
template <class R, class S>
concept BatchReduction = requires(const R& reduction, std::span<S> values) {
  reduction.mean(values);
};

/// The batch is entirely in this process: its means are already the batch's.
struct whole_batch {
  template <Scalar S>
  void mean(std::span<S>) const {}
};

/// A StepMethod whose step can run on one process's part of a batch split over several, with a
/// batch reduction for its weight steps: train_step(net, x, y, reduction).
template <class M, class Program>
concept ShardableStepMethod =
    StepMethod<M, Program> &&
    requires(M& method, Program& net, const Matrix<typename Program::scalar_type>& batch) {
      { method.train_step(net, batch, batch, whole_batch{}) } -> std::same_as<step_report>;
    };

}  // namespace bilevel
