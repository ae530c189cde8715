#pragma once
/// \file
/// Data-parallel training over MPI processes. Every process holds the whole program and the
/// same optimizer and method state, and sees the same global batch; it takes its shard (a
/// contiguous block of the batch's columns), runs the method on it, and the processes combine
/// their results so that every one takes the same step:
///
/// - a gradient method's estimate: each process's batch mean over its shard, times the shard's
///   share of the batch, summed by one in-place MPI_Allreduce over the flat gradient buffer:
///   the batch mean over the global batch, the same on every process, for the optimizer (the
///   report's loss, correct count, inner residual and energy are summed by a second call of
///   four numbers, cheaper than copying the gradient into a buffer with room for them);
/// - a block-coordinate method's native step (MAC, LPOM, FLN, AltMin): inference is per sample
///   and stays local; the weight steps' gradients and line-search values are averaged the same
///   way through a batch reduction (methods/batch_reduction.hpp).
///
/// Per-sample energies (docs/methods.md §1) make beta, gamma, mu and lambda mean the same whatever
/// the shard size. Gradient methods whose inference is per sample with fixed iteration counts
/// (BP, Fenchel BP, PCN, Z-IL, EP in its fixed_steps mode) then give the single-process step up
/// to rounding; solvers that adapt step sizes or stop on batch-wide criteria (CHL, LPOM, FLN
/// z-blocks, MAC's Z-step stopping rule, EP's converged mode) see only their shard and so
/// differ from a single process within their tolerances. States kept per training example
/// (EP's persistent particles) are not supported: the wrapper passes no sample indices. Every `check_every` steps the processes compare a checksum of their parameters,
/// so a divergence is reported instead of silently training different models.

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../io/checkpoint.hpp"
#include "../methods/batch_reduction.hpp"
#include "../methods/method.hpp"
#include "../train/dataset.hpp"
#include "../train/trainer.hpp"
#include "communicator.hpp"

namespace bilevel::mpi {

/// Columns [begin, begin + count) of a batch.
struct shard {
  Index begin = 0;
  Index count = 0;
};

/// Process `rank`'s shard of a batch of `size` columns split over `processes`: contiguous
/// blocks whose sizes differ by at most one, in rank order.
inline shard shard_of(Index size, int rank, int processes) {
  const Index begin = size * rank / processes, end = size * (rank + 1) / processes;
  return {begin, end - begin};
}

namespace detail {

/// processes.sum(values), its wall time added to `seconds` if given.
template <Scalar S>
void timed_sum(const communicator& processes, std::span<S> values, double* seconds) {
  const auto start = std::chrono::steady_clock::now();
  processes.sum(values);
  if (seconds)
    *seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace detail

/// The batch reduction (BatchReduction) of a batch split over the processes of `processes`:
/// a mean over this process's shard, weighted by the shard's share of the batch, summed over
/// the processes. Time spent communicating is added to `seconds` if given.
template <Scalar S>
class shard_mean {
 public:
  shard_mean(const communicator& processes, S share, double* seconds = nullptr)
      : processes_(processes), share_(share), seconds_(seconds) {}

  void mean(std::span<S> values) const {
    for (S& value : values) value *= share_;
    detail::timed_sum(processes_, values, seconds_);
  }

 private:
  const communicator& processes_;
  S share_;
  double* seconds_;
};

/// Wraps a method so that the processes of `processes` train one model on shards of every
/// batch (see the file comment). It is a GradientMethod where the method is one, a StepMethod
/// where the method's step takes a batch reduction (ShardableStepMethod), and predicts as the
/// method does. Use it wherever the method would go (bilevel::trainer, for instance), with the
/// same seed on every process so that every process draws the same global batches. An
/// exception on one process leaves the others waiting in the next collective operation: end
/// the job then (communicator::abort), as the mnist_mlp trainer does.
template <Scalar S, class Method>
class data_parallel {
 public:
  /// `check_every`: steps between the parameter checks (0: never).
  data_parallel(Method& method, const communicator& processes, Index check_every = 100)
      : method_(method), processes_(processes), check_every_(check_every) {
    bilevel::detail::require(check_every >= 0, "mpi::data_parallel", "check_every", ">= 0",
                             check_every);
  }

  std::string name() const { return method_.name(); }
  Method& method() { return method_; }
  const communicator& processes() const { return processes_; }
  /// Wall time spent in MPI reductions so far (for the communication share of a step).
  double communication_seconds() const { return communication_seconds_; }
  Index steps() const { return steps_; }

  /// The global batch's mean gradient estimate, the same on every process, and the report of
  /// the global batch (loss, inner residual, energy and safeguarded share: means; correct and
  /// unconverged samples: totals; idle layers: the mean over the shards, rounded down).
  template <class Program>
    requires GradientMethod<Method, Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    require_same_parameters(net);
    const Index B = x.cols();
    const shard part = shard_of(B, processes_.rank(), processes_.size());
    const S share = S(part.count) / S(B);
    step_report local;
    if (part.count > 0) {
      local = method_.gradient(net, x.middleCols(part.begin, part.count),
                               y.middleCols(part.begin, part.count), gradient);
      gradient *= share;
      pack_report(local, share);
    } else {  // fewer samples than processes: this one contributes nothing
      bilevel::detail::require_batch<Program, S>(net, x, y, "mpi::data_parallel::gradient");
      gradient.setZero(net.parameter_count());
      report_.setZero();
    }
    reduce(std::span<S>(gradient.data(), std::size_t(gradient.size())));
    return reduced_report(local.inner_iterations);
  }

  /// The method's native step on this process's shard with its weight steps averaged over the
  /// global batch; every shard must hold a sample (batch size >= number of processes).
  template <class Program>
    requires ShardableStepMethod<Method, Program>
  step_report train_step(Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y) {
    constexpr const char* function = "mpi::data_parallel::train_step";
    require_same_parameters(net);
    const Index B = x.cols();
    bilevel::detail::require(B >= processes_.size(), function, "the batch size",
                             bilevel::detail::parts(">= the number of processes (",
                                                     processes_.size(), ")"),
                             B);
    const shard part = shard_of(B, processes_.rank(), processes_.size());
    const S share = S(part.count) / S(B);
    const step_report local =
        method_.train_step(net, x.middleCols(part.begin, part.count),
                           y.middleCols(part.begin, part.count),
                           shard_mean<S>(processes_, share, &communication_seconds_));
    pack_report(local, share);
    return reduced_report(local.inner_iterations);
  }

  /// The method's own prediction (EP's free relaxation), of all of x on this process.
  template <class Program>
    requires PredictingMethod<Method, Program>
  void predict(const Program& net, const MatrixCRef<S>& x, Matrix<S>& output) {
    method_.predict(net, x, output);
  }

  /// A schedule's learning rate, for methods with weight optimizers of their own (AltMin).
  void set_learning_rate(S learning_rate)
    requires requires(Method& m, S rate) { m.set_learning_rate(rate); }
  {
    method_.set_learning_rate(learning_rate);
  }

  void save_state(state_writer& out) const { method_.save_state(out); }
  void load_state(state_reader& in) { method_.load_state(in); }

 private:
  /// This shard's part of the global report: shares of the means, the correct count.
  void pack_report(const step_report& report, S share) {
    report_ << share * S(report.loss), S(report.correct), share * S(report.inner_residual),
        share * S(report.inner_energy), S(report.unconverged), share * S(report.safeguarded),
        share * S(report.idle_layers);
  }

  /// The global batch's report, summed over the processes.
  step_report reduced_report(Index inner_iterations) {
    reduce(std::span<S>(report_.data(), std::size_t(report_.size())));
    step_report report;
    report.loss = double(report_(0));
    report.correct = Index(std::llround(double(report_(1))));
    report.inner_residual = double(report_(2));
    report.inner_energy = double(report_(3));
    report.unconverged = Index(std::llround(double(report_(4))));
    report.safeguarded = double(report_(5));
    // A layer is idle only where it is idle on every shard; the mean is its closest bound.
    report.idle_layers = Index(std::floor(double(report_(6)) + 1e-3));
    report.inner_iterations = inner_iterations;  // this process's
    return report;
  }

  void reduce(std::span<S> values) {
    detail::timed_sum(processes_, values, &communication_seconds_);
  }

  /// Every check_every steps (and at the first): the processes' parameters must be bitwise
  /// equal, compared by their CRC-32.
  template <class Program>
  void require_same_parameters(const Program& net) {
    if (check_every_ > 0 && steps_ % check_every_ == 0) {
      const Vector<S>& parameters = net.parameters();
      const auto bytes = std::span<const std::uint8_t>(
          reinterpret_cast<const std::uint8_t*>(parameters.data()),
          std::size_t(parameters.size()) * sizeof(S));
      if (!processes_.same_everywhere(bilevel::detail::crc32_of(bytes)))
        throw error(bilevel::detail::concat(
            "mpi::data_parallel: the ", processes_.size(),
            " processes' parameters differ before step ", steps_ + 1,
            ": they were changed outside the data-parallel step, or started from different "
            "states (share them with mpi::broadcast_state first)"));
    }
    ++steps_;
  }

  Method& method_;
  const communicator& processes_;
  Index check_every_;
  Index steps_ = 0;
  double communication_seconds_ = 0;
  /// Loss, correct count, inner residual, inner energy, unconverged samples, safeguarded share
  /// and idle layers.
  Eigen::Matrix<S, 7, 1> report_;
};

/// Makes every process's `components` (a program, an optimizer, a method, a trainer's
/// progress: anything a checkpoint holds) equal to those of process `root`, through the bytes
/// of a checkpoint. Collective; throws on every process if one of them cannot take the state
/// over (for instance a program of other sizes), with that process naming the difference.
template <Checkpointable... Components>
void broadcast_state(const communicator& processes, Components&... components) {
  constexpr int root = 0;
  std::vector<std::uint8_t> bytes;
  if (processes.rank() == root) bytes = checkpoint_bytes(components...);
  bytes = processes.broadcast(std::move(bytes), root);
  std::string failure;
  if (processes.rank() != root) {
    try {
      restore_checkpoint(bytes,
                         bilevel::detail::concat("mpi::broadcast_state (rank ", processes.rank(),
                                                 ")"),
                         components...);
    } catch (const error& e) {
      failure = e.what();
    }
  }
  if (!processes.all(failure.empty()))
    throw config_error(failure.empty() ? std::string("mpi::broadcast_state: another process "
                                                     "could not take over the state of rank 0")
                                       : failure);
}

/// Fraction of misclassified samples of `set`: each process evaluates its shard of the set
/// (see bilevel::correct_predictions) and the counts are summed; the same on every process.
template <class Program, class Method>
double classification_error(const communicator& processes, const Program& net,
                            const dataset<typename Program::scalar_type>& set, Method& method,
                            Index chunk = 1000) {
  if (set.size() == 0) return std::numeric_limits<double>::quiet_NaN();
  const shard part = shard_of(set.size(), processes.rank(), processes.size());
  std::int64_t correct[1] = {std::int64_t(correct_predictions(
      net, set.x.middleCols(part.begin, part.count), set.y.middleCols(part.begin, part.count),
      method, chunk))};
  processes.sum(std::span<std::int64_t>(correct));
  return 1.0 - double(correct[0]) / double(set.size());
}

}  // namespace bilevel::mpi
