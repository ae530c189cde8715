#pragma once
// The training loop: shuffled minibatches, a method's gradient (or its own step), an optimizer,
// and evaluation. Timing covers the training steps only, not evaluation.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "../core/error.hpp"
#include "../core/random.hpp"
#include "../methods/method.hpp"
#include "../program.hpp"
#include "dataset.hpp"

namespace bilevel {

struct epoch_report {
  double loss = 0;            ///< mean training loss over the epoch's batches (at each forward pass)
  double running_error = 0;   ///< fraction misclassified during the epoch's forward passes
  double seconds = 0;         ///< wall time of the training steps
  double samples_per_second = 0;
  double inner_residual = std::numeric_limits<double>::quiet_NaN();  ///< mean over batches
  Index batches = 0;
};

/// Fraction of misclassified samples (argmax of the output), evaluated in chunks of columns.
template <class Program>
double classification_error(const Program& net, const dataset<typename Program::scalar_type>& set,
                            Index chunk = 1000) {
  using S = typename Program::scalar_type;
  if (set.size() == 0) return std::numeric_limits<double>::quiet_NaN();
  forward_state<S> state;
  Index correct = 0;
  for (Index begin = 0; begin < set.size(); begin += chunk) {
    const Index count = std::min(chunk, set.size() - begin);
    net.forward(set.x.middleCols(begin, count), state);
    correct += count_correct<S>(state.z.back(), set.y.middleCols(begin, count));
  }
  return 1.0 - double(correct) / double(set.size());
}

/// Trains `net` with a gradient method and an optimizer, one epoch at a time. The shuffling
/// depends only on the seed.
template <class Program, class Method, class Optimizer>
  requires GradientMethod<Method, Program>
class trainer {
 public:
  using S = typename Program::scalar_type;

  trainer(Program& net, Method& method, Optimizer& optimizer, Index batch_size,
          std::uint64_t seed)
      : net_(net), method_(method), optimizer_(optimizer), batch_size_(batch_size), random_(seed) {
    detail::require(batch_size > 0, "trainer", "the batch size", "> 0", batch_size);
  }

  /// One pass over `train` in a fresh random order; the last partial batch is used too.
  /// Throws numeric_error naming the epoch and batch when a loss or gradient is not finite.
  epoch_report run_epoch(const dataset<S>& train) {
    detail::require_shape("trainer::run_epoch", "the inputs", net_.input_size(), train.size(),
                          train.x.rows(), train.size());
    detail::require_shape("trainer::run_epoch", "the targets", net_.output_size(), train.size(),
                          train.y.rows(), train.size());
    order_.resize(std::size_t(train.size()));
    std::iota(order_.begin(), order_.end(), Index(0));
    random_.shuffle(order_);
    ++epoch_;

    epoch_report report;
    double loss_sum = 0, residual_sum = 0;
    Index wrong = 0, residual_count = 0;
    const auto start = std::chrono::steady_clock::now();
    for (Index begin = 0; begin < train.size(); begin += batch_size_) {
      const Index count = std::min(batch_size_, train.size() - begin);
      gather(train, begin, count);
      const step_report step = method_.gradient(net_, batch_x_, batch_y_, gradient_);
      ++report.batches;
      if (!std::isfinite(step.loss) || !gradient_.allFinite()) {
        throw numeric_error(detail::concat("trainer::run_epoch: ",
                                           std::isfinite(step.loss) ? "gradient" : "loss",
                                           " is not finite in epoch ", epoch_, ", batch ",
                                           report.batches, " (method ", method_.name(), ")"));
      }
      optimizer_.step(net_.parameters(), gradient_);
      loss_sum += step.loss * double(count);
      wrong += count - step.correct;
      if (std::isfinite(step.inner_residual)) {
        residual_sum += step.inner_residual;
        ++residual_count;
      }
    }
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    report.loss = loss_sum / double(train.size());
    report.running_error = double(wrong) / double(train.size());
    report.samples_per_second = double(train.size()) / report.seconds;
    if (residual_count > 0) report.inner_residual = residual_sum / double(residual_count);
    return report;
  }

  Index epoch() const { return epoch_; }
  random_source& random() { return random_; }

 private:
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
  random_source random_;
  Index epoch_ = 0;
  std::vector<Index> order_;
  Matrix<S> batch_x_, batch_y_;
  Vector<S> gradient_;
};

}  // namespace bilevel
