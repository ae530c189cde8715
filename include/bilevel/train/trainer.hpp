#pragma once
/// \file
/// The training loop: shuffled minibatches, a method's gradient (or its own step), an optimizer,
/// and evaluation. Timing covers the training steps only, not evaluation.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "../core/error.hpp"
#include "../core/finite.hpp"
#include "../core/random.hpp"
#include "../core/state_stream.hpp"
#include "../methods/method.hpp"
#include "../program.hpp"
#include "dataset.hpp"

namespace bilevel {

struct epoch_report {
  double loss = 0;            ///< mean training loss over the epoch's batches (at each forward pass)
  double running_error = 0;   ///< fraction misclassified during the epoch's forward passes
  double seconds = 0;         ///< wall time of the training steps
  double samples_per_second = 0;
  /// Iterative methods: means over the batches of the inner solver's final residual and energy.
  double inner_residual = std::numeric_limits<double>::quiet_NaN();
  double inner_energy = std::numeric_limits<double>::quiet_NaN();
  /// The share of the epoch's samples whose inner problem stopped at its cap before converging
  /// (step_report::unconverged; docs/methods.md §5.6b): 0 when every inner solve converged.
  double unconverged_share = 0;
  /// LPOM: the mean over the batches of the share of safeguarded fixed-point updates.
  double safeguarded_share = std::numeric_limits<double>::quiet_NaN();
  /// AltMin: steps in which some layer got an exactly zero gradient because no code moved.
  Index idle_layer_steps = 0;
  Index batches = 0;
};

/// Samples (columns of x and y) whose largest output coincides with the largest target entry,
/// evaluated in chunks of columns: by the forward pass, or by `method.predict` for methods whose
/// model predicts otherwise.
template <class Program, class Method>
Index correct_predictions(const Program& net, const MatrixCRef<typename Program::scalar_type>& x,
                          const MatrixCRef<typename Program::scalar_type>& y, Method& method,
                          Index chunk = 1000) {
  using S = typename Program::scalar_type;
  detail::require(chunk > 0, "correct_predictions", "the chunk size", "> 0", chunk);
  forward_state<S> state;
  Matrix<S> output;
  Index correct = 0;
  for (Index begin = 0; begin < x.cols(); begin += chunk) {
    const Index count = std::min(chunk, x.cols() - begin);
    const auto inputs = x.middleCols(begin, count);
    if constexpr (PredictingMethod<Method, Program>) {
      method.predict(net, inputs, output);
    } else {
      net.forward(inputs, state);
      output.swap(state.z.back());
    }
    if (!all_finite(output))  // a NaN output would count as a prediction of class 0
      throw numeric_error(detail::concat("correct_predictions: the output is not finite for a "
                                         "sample among columns ", begin, " to ", begin + count - 1,
                                         " (the parameters have blown up?)"));
    correct += count_correct<S>(output, y.middleCols(begin, count));
  }
  return correct;
}

/// Fraction of misclassified samples of `set` (see correct_predictions).
template <class Program, class Method>
double classification_error(const Program& net, const dataset<typename Program::scalar_type>& set,
                            Method& method, Index chunk = 1000) {
  if (set.size() == 0) return std::numeric_limits<double>::quiet_NaN();
  const Index correct = correct_predictions(net, set.x, set.y, method, chunk);
  return 1.0 - double(correct) / double(set.size());
}

/// Fraction of misclassified samples by the forward pass.
template <class Program>
double classification_error(const Program& net, const dataset<typename Program::scalar_type>& set,
                            Index chunk = 1000) {
  struct forward_only {} method;
  return classification_error(net, set, method, chunk);
}

/// What the training loop itself carries from epoch to epoch: the number of epochs run and the
/// random source of the shuffling. Checkpoint it with the program, the optimizer and the method
/// to resume a run exactly.
struct training_progress {
  Index epoch = 0;
  random_source random;

  explicit training_progress(std::uint64_t seed) : random(seed) {}

  void save_state(state_writer& out) const {
    out.write_text("training_progress");
    out.write_index(epoch);
    random.save_state(out);
  }
  void load_state(state_reader& in) {
    in.expect_text("training_progress", "component");
    const Index epochs = in.read_count("epoch");
    random_source restored = random;
    restored.load_state(in);
    epoch = epochs;
    random = restored;
  }
};

/// How the trainer steps a method that offers both a gradient and a step of its own.
enum class step_mode { gradient, native };

/// The order of the samples in an epoch: a fresh random permutation (the default), or the data
/// set's own order every epoch (as some papers' code trains).
enum class sample_order { shuffled, fixed };

/// Trains `net` one epoch at a time: with a method's gradient and the optimizer, or with the
/// method's own training step (methods that have only that use it; for methods with both,
/// `mode` chooses). The shuffling depends only on the seed. Methods that keep a state per
/// training example (SampleIndexedMethod: EP's persistent particles) get each batch's sample
/// indices, the columns of the data set passed to run_epoch.
template <class Program, class Method, class Optimizer>
  requires GradientMethod<Method, Program> || StepMethod<Method, Program>
class trainer {
 public:
  using S = typename Program::scalar_type;

  trainer(Program& net, Method& method, Optimizer& optimizer, Index batch_size,
          std::uint64_t seed, step_mode mode = step_mode::gradient)
      : net_(net),
        method_(method),
        optimizer_(optimizer),
        batch_size_(batch_size),
        progress_(seed),
        native_(!GradientMethod<Method, Program> || mode == step_mode::native) {
    detail::require(batch_size > 0, "trainer", "the batch size", "> 0", batch_size);
    detail::require(!native_ || StepMethod<Method, Program>, "trainer", "step_mode::native",
                    "a method with its own train_step", method.name());
    if constexpr (requires { method.has_native_step(); })  // any_method: known at run time
      detail::require(!native_ || method.has_native_step(), "trainer", "step_mode::native",
                      "a method with its own train_step (mac, lpom, fln, altmin)", method.name());
  }

  /// One pass over `train` in a fresh random order (or its own, set_sample_order); the last
  /// partial batch is used too. Throws config_error for an empty set, and numeric_error naming
  /// the epoch and batch when a loss, a gradient or a parameter after the step is not finite.
  epoch_report run_epoch(const dataset<S>& train) {
    return run_epoch(train, [](Index, Index, Index) {});
  }

  /// The same, calling `on_batch(batches_done, batches_total, samples_done)` after every batch
  /// (for progress displays; its time counts as training time, so keep it cheap).
  template <class OnBatch>
  epoch_report run_epoch(const dataset<S>& train, OnBatch&& on_batch) {
    detail::require_shape("trainer::run_epoch", "the inputs", net_.input_size(), train.size(),
                          train.x.rows(), train.size());
    detail::require_shape("trainer::run_epoch", "the targets", net_.output_size(), train.size(),
                          train.y.rows(), train.size());
    detail::require(train.size() > 0, "trainer::run_epoch", "the number of training samples",
                    "> 0", train.size());
    order_.resize(std::size_t(train.size()));
    std::iota(order_.begin(), order_.end(), Index(0));
    if (order_kind_ == sample_order::shuffled) progress_.random.shuffle(order_);
    ++progress_.epoch;

    epoch_report report;
    const Index batches_total = (train.size() + batch_size_ - 1) / batch_size_;
    double loss_sum = 0, residual_sum = 0, energy_sum = 0, safeguarded_sum = 0;
    Index wrong = 0, residual_count = 0, energy_count = 0, unconverged = 0, safeguarded_count = 0;
    const auto start = std::chrono::steady_clock::now();
    for (Index begin = 0; begin < train.size(); begin += batch_size_) {
      const Index count = std::min(batch_size_, train.size() - begin);
      gather(train, begin, count);
      const step_report step = [&] {
        try {
          return take_step(std::span<const Index>(order_.data() + begin, std::size_t(count)));
        } catch (const numeric_error& e) {  // e.g. a NaN in the data: say where it was met
          throw numeric_error(detail::concat("trainer::run_epoch: epoch ", progress_.epoch,
                                             ", batch ", report.batches + 1, ": ", e.what()));
        }
      }();
      ++report.batches;
      const bool update_finite =
          native_ ? all_finite(net_.parameters()) : all_finite(gradient_);
      if (!std::isfinite(step.loss) || !update_finite) {
        throw numeric_error(detail::concat(
            "trainer::run_epoch: ",
            !std::isfinite(step.loss) ? "loss" : native_ ? "a parameter" : "gradient",
            " is not finite in epoch ", progress_.epoch, ", batch ", report.batches, " (method ",
            method_.name(), ")"));
      }
      if (!native_) {
        optimizer_.step(net_.parameters(), gradient_);
        // A finite gradient times a huge rate can still overflow: the last step of a run has no
        // next loss to catch it, so the parameters themselves are checked.
        if (!all_finite(net_.parameters()))
          throw numeric_error(detail::concat(
              "trainer::run_epoch: a parameter is not finite after the optimizer step in epoch ",
              progress_.epoch, ", batch ", report.batches, " (method ", method_.name(), ")"));
      }
      loss_sum += step.loss * double(count);
      wrong += count - step.correct;
      if (std::isfinite(step.inner_residual)) {
        residual_sum += step.inner_residual;
        ++residual_count;
      }
      if (std::isfinite(step.inner_energy)) {
        energy_sum += step.inner_energy;
        ++energy_count;
      }
      if (std::isfinite(step.safeguarded)) {
        safeguarded_sum += step.safeguarded;
        ++safeguarded_count;
      }
      unconverged += step.unconverged;
      report.idle_layer_steps += step.idle_layers > 0;
      on_batch(report.batches, batches_total, begin + count);
    }
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report.loss = loss_sum / double(train.size());
    report.running_error = double(wrong) / double(train.size());
    report.samples_per_second = double(train.size()) / report.seconds;
    if (residual_count > 0) report.inner_residual = residual_sum / double(residual_count);
    if (energy_count > 0) report.inner_energy = energy_sum / double(energy_count);
    if (safeguarded_count > 0) report.safeguarded_share = safeguarded_sum / double(safeguarded_count);
    report.unconverged_share = double(unconverged) / double(train.size());
    return report;
  }

  /// Shuffled (the default) or fixed order of the samples, from the next epoch on.
  void set_sample_order(sample_order order) { order_kind_ = order; }
  sample_order order() const { return order_kind_; }

  /// Epochs run so far (a resumed run counts those before the checkpoint too).
  Index epoch() const { return progress_.epoch; }
  bool native_steps() const { return native_; }
  Program& program() { return net_; }
  Method& method() { return method_; }
  Optimizer& optimizer() { return optimizer_; }
  training_progress& progress() { return progress_; }
  const training_progress& progress() const { return progress_; }

 private:
  /// `samples`: the batch's columns in the data set.
  step_report take_step(std::span<const Index> samples) {
    if constexpr (!GradientMethod<Method, Program>) {
      return method_.train_step(net_, batch_x_, batch_y_);
    } else if constexpr (StepMethod<Method, Program>) {
      return native_ ? method_.train_step(net_, batch_x_, batch_y_)
                     : method_.gradient(net_, batch_x_, batch_y_, gradient_);
    } else if constexpr (SampleIndexedMethod<Method, Program>) {
      return method_.gradient(net_, batch_x_, batch_y_, samples, gradient_);
    } else {
      return method_.gradient(net_, batch_x_, batch_y_, gradient_);
    }
  }

  void gather(const dataset<S>& train, Index begin, Index count) {
    batch_x_.resize(train.x.rows(), count);
    batch_y_.resize(train.y.rows(), count);
    for (Index j = 0; j < count; ++j) {
      const Index column = order_[std::size_t(begin + j)];
      batch_x_.col(j) = train.x.col(column);
      batch_y_.col(j) = train.y.col(column);
    }
  }

  Program& net_;
  Method& method_;
  Optimizer& optimizer_;
  Index batch_size_;
  training_progress progress_;
  bool native_;
  sample_order order_kind_ = sample_order::shuffled;
  std::vector<Index> order_;
  Matrix<S> batch_x_, batch_y_;
  Vector<S> gradient_;
};

}  // namespace bilevel
