#pragma once
/// \file
/// The run loop: epochs of a trainer with a learning-rate schedule, evaluation on the training,
/// validation and test sets after every epoch, the best epoch by validation error, and
/// checkpoints at a fixed cadence; what a program does with each epoch's results (print, log,
/// plot) goes into callbacks. The MNIST trainer is this loop with its flags and outputs.

#include <cmath>
#include <functional>
#include <limits>
#include <optional>

#include "../core/error.hpp"
#include "../core/state_stream.hpp"
#include "../optimizers/schedule.hpp"
#include "dataset.hpp"
#include "trainer.hpp"

namespace bilevel {

/// What a run carries from epoch to epoch for its report. Checkpoint it with the trainer's
/// progress, so that a resumed run reports the same best epoch and totals as one that ran
/// through. Errors are fractions; 2 marks "not measured yet".
struct run_record {
  double initial_test_error = 2;  ///< before the first epoch
  double best_validation = 2;     ///< the lowest validation error so far
  double test_at_best = 2;        ///< the test error in the epoch of best_validation
  double total_seconds = 0;       ///< training time of all epochs so far (epoch_report::seconds)
  Index best_epoch = 0;           ///< 0 before any epoch with a validation error

  void save_state(state_writer& out) const {
    out.write_text("run_record");
    for (const double value : {initial_test_error, best_validation, test_at_best, total_seconds})
      out.write_f64(value);
    out.write_index(best_epoch);
  }
  void load_state(state_reader& in) {
    in.expect_text("run_record", "component");
    run_record loaded;
    loaded.initial_test_error = in.read_finite("initial test error", 0, 2);
    loaded.best_validation = in.read_finite("best validation error", 0, 2);
    loaded.test_at_best = in.read_finite("test error at the best validation error", 0, 2);
    loaded.total_seconds = in.read_finite("training seconds", 0, 1e12);
    loaded.best_epoch = in.read_count("best epoch");
    *this = loaded;
  }
};

/// The sets of a run. Only `train` is required; a missing or empty set is not evaluated (its
/// errors are NaN).
template <Scalar S>
struct run_data {
  const dataset<S>* train = nullptr;
  const dataset<S>* test = nullptr;
  const dataset<S>* validation = nullptr;
};

struct run_settings {
  Index epochs = 1;  ///< the run ends after this epoch (counting those of a resumed run)
  bool evaluate_train = true;  ///< the training set's error after every epoch (a full pass)
  /// The learning rate of each epoch, set on the optimizer and on methods with weight
  /// optimizers of their own (AltMin); none: the rates stay as they are.
  std::optional<lr_schedule<double>> schedule = std::nullopt;
  Index save_every = 1;  ///< epochs between calls of run_callbacks::save
};

/// One epoch's results, as run_callbacks::epoch_finished receives them.
struct epoch_result {
  Index epoch = 0;
  double learning_rate = std::numeric_limits<double>::quiet_NaN();  ///< NaN without a schedule
  epoch_report training;
  double train_error = std::numeric_limits<double>::quiet_NaN();
  double validation_error = std::numeric_limits<double>::quiet_NaN();
  double test_error = std::numeric_limits<double>::quiet_NaN();
  bool best = false;  ///< this epoch lowered the validation error
};

/// Every hook is optional.
template <Scalar S>
struct run_callbacks {
  /// The classification error of a set; default: classification_error with the trainer's
  /// method (its own prediction where it has one). Replace it to evaluate otherwise, e.g. the
  /// processes of an MPI job each on a shard (mpi::classification_error).
  std::function<double(const dataset<S>&)> error = nullptr;
  /// Before each epoch, with its number (1-based) and learning rate (NaN without a schedule).
  std::function<void(Index epoch, double learning_rate)> epoch_started = nullptr;
  /// After every batch (trainer::run_epoch's on_batch); its time counts as training time.
  std::function<void(Index batches_done, Index batches_total, Index samples_done)> batch_done =
      nullptr;
  /// After each epoch's evaluation and checkpoint.
  std::function<void(const epoch_result&)> epoch_finished = nullptr;
  /// Writes a checkpoint: once before the first epoch (so that an unwritable path fails at
  /// once), after every settings.save_every-th epoch and after the last.
  std::function<void()> save = nullptr;
};

/// Runs `loop` from its next epoch to settings.epochs, updating `record`. A run resumed from a
/// checkpoint (trainer progress and record restored) continues as if it had not stopped.
template <class Program, class Method, class Optimizer>
void run_epochs(trainer<Program, Method, Optimizer>& loop,
                const run_data<typename Program::scalar_type>& data,
                const run_settings& settings, run_record& record,
                const run_callbacks<typename Program::scalar_type>& callbacks = {}) {
  using S = typename Program::scalar_type;
  detail::require(data.train != nullptr, "run_epochs", "the training set", "given", "none");
  detail::require(settings.save_every > 0, "run_epochs", "save_every", "> 0",
                  settings.save_every);
  const auto error = [&](const dataset<S>* set) {
    if (set == nullptr || set->size() == 0) return std::numeric_limits<double>::quiet_NaN();
    return callbacks.error ? callbacks.error(*set)
                           : classification_error(loop.program(), *set, loop.method());
  };
  const auto save = [&] {
    if (callbacks.save) callbacks.save();
  };

  if (loop.epoch() == 0) {
    const double initial = error(data.test);
    record.initial_test_error = std::isnan(initial) ? 2 : initial;
  }
  save();
  for (Index epoch = loop.epoch() + 1; epoch <= settings.epochs; ++epoch) {
    epoch_result result;
    result.epoch = epoch;
    if (settings.schedule) {
      result.learning_rate = settings.schedule->at(epoch - 1);
      const S rate = S(result.learning_rate);
      loop.optimizer().set_learning_rate(rate);
      if constexpr (requires(Method& method, S r) { method.set_learning_rate(r); })
        loop.method().set_learning_rate(rate);
    }
    if (callbacks.epoch_started) callbacks.epoch_started(epoch, result.learning_rate);
    result.training = loop.run_epoch(*data.train, [&](Index done, Index total, Index samples) {
      if (callbacks.batch_done) callbacks.batch_done(done, total, samples);
    });
    record.total_seconds += result.training.seconds;
    if (settings.evaluate_train) result.train_error = error(data.train);
    result.validation_error = error(data.validation);
    result.test_error = error(data.test);
    if (result.validation_error < record.best_validation) {  // false for NaN
      record.best_validation = result.validation_error;
      record.test_at_best = std::isnan(result.test_error) ? 2 : result.test_error;
      record.best_epoch = epoch;
      result.best = true;
    }
    if (epoch % settings.save_every == 0 || epoch == settings.epochs) save();
    if (callbacks.epoch_finished) callbacks.epoch_finished(result);
  }
}

}  // namespace bilevel
