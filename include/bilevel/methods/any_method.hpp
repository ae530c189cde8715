#pragma once
/// \file
/// One type for every built-in method, chosen at run time (by make_method, registry.hpp): a
/// variant with one dispatch per batch, which is a GradientMethod, a StepMethod where the
/// method it holds has a step of its own, and predicts as that method does. Programs that
/// choose their method by name (a command line, a sweep script) train it with bilevel::trainer
/// like any other method.

#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "../core/error.hpp"
#include "../core/state_stream.hpp"
#include "../activations/relu.hpp"
#include "../program.hpp"
#include "altmin.hpp"
#include "batch_reduction.hpp"
#include "bp.hpp"
#include "chl.hpp"
#include "ep.hpp"
#include "fenchel_bp.hpp"
#include "fln.hpp"
#include "lpom.hpp"
#include "mac.hpp"
#include "method.hpp"
#include "pcn.hpp"

namespace bilevel {

template <Scalar S>
class any_method {
 public:
  using variant = std::variant<bp<S>, fenchel_bp<S>, chl<S>, ep<S>, pcn<S>, mac<S>, lpom<S>,
                               fln<S>, altmin<S>>;

  /// Holds `method`, any of the variant's alternatives.
  template <class Method>
    requires std::is_constructible_v<variant, Method&&>
  any_method(Method&& method) : method_(std::forward<Method>(method)) {}  // NOLINT: implicit

  std::string name() const {
    return std::visit([](const auto& m) { return m.name(); }, method_);
  }

  /// Where the method's inner solve starts ("forward" or "first-order"), or "" without one.
  std::string inner_start_name() const {
    return std::visit(
        [](const auto& m) -> std::string {
          if constexpr (requires { m.config().start; })
            return std::string(start_name(m.config().start));
          else
            return "";
        },
        method_);
  }

  /// PCN's inference dynamics ("plain", "momentum" or "anderson"), or "" for another method.
  std::string inference_name() const {
    return std::visit(
        [](const auto& m) -> std::string {
          if constexpr (requires { m.config().inference; })
            return std::string(bilevel::inference_name(m.config().inference));
          else
            return "";
        },
        method_);
  }

  /// Whether the method has a training step of its own (MAC, LPOM, FLN, AltMin), which
  /// trainer's step_mode::native uses.
  bool has_native_step() const {
    return std::visit(
        [](const auto& m) {
          return ShardableStepMethod<std::decay_t<decltype(m)>, mlp<S, relu>>;
        },
        method_);
  }

  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    return std::visit([&](auto& m) { return m.gradient(net, x, y, gradient); }, method_);
  }

  /// The same with the batch's sample indices, for methods that keep a state per training
  /// example (EP's persistent particles); the others ignore them.
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       std::span<const Index> samples, Vector<S>& gradient) {
    return std::visit(
        [&](auto& m) {
          if constexpr (SampleIndexedMethod<std::decay_t<decltype(m)>, Program>)
            return m.gradient(net, x, y, samples, gradient);
          else
            return m.gradient(net, x, y, gradient);
        },
        method_);
  }

  /// The native step; `shards` averages its weight steps over a batch split over processes.
  /// Throws config_error for a method without one (has_native_step).
  template <class Program, BatchReduction<S> Reduction = whole_batch>
  step_report train_step(Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                         const Reduction& shards = {}) {
    return std::visit(
        [&](auto& m) -> step_report {
          if constexpr (ShardableStepMethod<std::decay_t<decltype(m)>, Program>)
            return m.train_step(net, x, y, shards);
          else
            throw config_error("any_method::train_step: " + m.name() +
                               " has no training step of its own (use its gradient)");
        },
        method_);
  }

  /// The learning-rate schedule reaches methods with weight optimizers of their own (AltMin).
  void set_learning_rate(S rate) {
    std::visit(
        [rate](auto& m) {
          if constexpr (requires { m.set_learning_rate(rate); }) m.set_learning_rate(rate);
        },
        method_);
  }

  void save_state(state_writer& out) const {
    std::visit([&](const auto& m) { m.save_state(out); }, method_);
  }
  void load_state(state_reader& in) {
    std::visit([&](auto& m) { m.load_state(in); }, method_);
  }

  /// EP predicts by free relaxation; every other method by the forward pass.
  template <class Program>
  void predict(const Program& net, const MatrixCRef<S>& x, Matrix<S>& output) {
    std::visit(
        [&](auto& m) {
          if constexpr (PredictingMethod<std::decay_t<decltype(m)>, Program>) {
            m.predict(net, x, output);
          } else {
            net.forward(x, state_);
            output.swap(state_.z.back());
          }
        },
        method_);
  }

  /// The method held, for what the common interface does not cover (std::get<chl<S>>, visit).
  variant& held() { return method_; }
  const variant& held() const { return method_; }

 private:
  variant method_;
  forward_state<S> state_;
};

}  // namespace bilevel
