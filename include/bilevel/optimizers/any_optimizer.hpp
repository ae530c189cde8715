#pragma once
/// \file
/// One type for the built-in optimizers, chosen at run time (a command line, the Python
/// module): a variant with one dispatch per step, which steps, schedules and checkpoints like
/// the optimizer it holds.

#include <utility>
#include <variant>

#include "../core/state_stream.hpp"
#include "../core/types.hpp"
#include "adam.hpp"
#include "sgd.hpp"

namespace bilevel {

template <Scalar S>
class any_optimizer {
 public:
  using variant = std::variant<adam<S>, sgd<S>>;

  /// Holds `optimizer`, adam or sgd.
  template <class Optimizer>
    requires std::is_constructible_v<variant, Optimizer&&>
  any_optimizer(Optimizer&& optimizer)  // NOLINT: implicit, as any_method
      : optimizer_(std::forward<Optimizer>(optimizer)) {}

  void step(Eigen::Ref<Vector<S>> params, const Eigen::Ref<const Vector<S>>& gradient) {
    std::visit([&](auto& o) { o.step(params, gradient); }, optimizer_);
  }
  void set_learning_rate(S rate) {
    std::visit([rate](auto& o) { o.set_learning_rate(rate); }, optimizer_);
  }
  S learning_rate() const {
    return std::visit([](const auto& o) { return o.learning_rate(); }, optimizer_);
  }
  void save_state(state_writer& out) const {
    std::visit([&](const auto& o) { o.save_state(out); }, optimizer_);
  }
  void load_state(state_reader& in) {
    std::visit([&](auto& o) { o.load_state(in); }, optimizer_);
  }

  /// The optimizer held, for what the common interface does not cover.
  variant& held() { return optimizer_; }
  const variant& held() const { return optimizer_; }

 private:
  variant optimizer_;
};

}  // namespace bilevel
