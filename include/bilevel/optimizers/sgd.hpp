#pragma once
/// \file
/// Stochastic gradient descent with optional (Nesterov) momentum and coupled L2 weight decay,
/// stepping one flat parameter buffer laid out as [weights ... | biases ...].

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <string_view>
#include <utility>

#include "../core/error.hpp"
#include "../core/finite.hpp"
#include "../core/state_stream.hpp"
#include "../core/types.hpp"

namespace bilevel {

template <Scalar S>
class sgd {
 public:
  struct settings {
    S learning_rate = S(0.01);
    S momentum = S(0);
    bool nesterov = false;
    S weight_decay = S(0);
  };

  /// `n_decayed` is the length of the prefix (the weights) that weight decay applies to.
  sgd(settings config, Index n_params, Index n_decayed)
      : config_(config), n_params_(n_params), n_decayed_(n_decayed) {
    detail::require_positive_finite("sgd", "learning_rate", config.learning_rate);
    detail::require(std::isfinite(config.momentum) && config.momentum >= 0 && config.momentum < 1,
                    "sgd", "momentum", "in [0, 1)", config.momentum);
    detail::require(!config.nesterov || config.momentum > 0, "sgd", "momentum",
                    "> 0 when nesterov is set", config.momentum);
    detail::require(std::isfinite(config.weight_decay) && config.weight_decay >= 0, "sgd",
                    "weight_decay", ">= 0", config.weight_decay);
    detail::require(n_params >= 0, "sgd", "n_params", ">= 0", n_params);
    detail::require(n_decayed >= 0 && n_decayed <= n_params, "sgd", "n_decayed",
                    detail::parts("in [0, n_params] = [0, ", n_params, "]"), n_decayed);
    // Kept for every configuration so that checkpoints have one layout.
    velocity_.setZero(n_params);
  }

  /// One update with a batch-averaged gradient of the same layout as `params`.
  void step(Eigen::Ref<Vector<S>> params, const Eigen::Ref<const Vector<S>>& grad) {
    detail::require_shape("sgd::step", "params", n_params_, 1, params.rows(), params.cols());
    detail::require_shape("sgd::step", "grad", n_params_, 1, grad.rows(), grad.cols());
    update_range(params, grad, 0, n_decayed_, config_.weight_decay);
    update_range(params, grad, n_decayed_, n_params_, S(0));
    ++steps_;
  }

  void set_learning_rate(S learning_rate) {
    detail::require_positive_finite("sgd::set_learning_rate", "learning_rate", learning_rate);
    config_.learning_rate = learning_rate;
  }
  S learning_rate() const { return config_.learning_rate; }
  const settings& config() const { return config_; }
  Index n_params() const { return n_params_; }
  Index n_decayed() const { return n_decayed_; }

  /// Optimiser state, for checkpoints.
  Index steps() const { return steps_; }
  const Vector<S>& velocity() const { return velocity_; }

  /// Puts back state saved from `velocity()` and `steps()`.
  void restore(Vector<S> velocity, Index steps) {
    detail::require_shape("sgd::restore", "velocity", n_params_, 1, velocity.rows(),
                          velocity.cols());
    detail::require(steps >= 0, "sgd::restore", "steps", ">= 0", steps);
    detail::require(all_finite(velocity), "sgd::restore", "velocity", "finite",
                    "a NaN or Inf entry");
    velocity_ = std::move(velocity);
    steps_ = steps;
  }

  /// Settings (a scheduled learning rate is state too), velocity and step count.
  void save_state(state_writer& out) const {
    out.write_text("sgd");
    out.write_index(n_params_);
    out.write_index(n_decayed_);
    out.write_f64(double(config_.learning_rate));
    out.write_f64(double(config_.momentum));
    out.write_bool(config_.nesterov);
    out.write_f64(double(config_.weight_decay));
    out.write_index(steps_);
    out.write_values<S>(velocity_);
  }

  /// Restores what save_state wrote; the parameter layout must be this optimizer's.
  void load_state(state_reader& in) {
    in.expect_text("sgd", "optimizer");
    in.read_index("sgd parameter count", n_params_, n_params_);
    in.read_index("sgd decayed parameter count", n_decayed_, n_decayed_);
    settings config;
    config.learning_rate = S(in.read_f64("sgd learning_rate"));
    config.momentum = S(in.read_f64("sgd momentum"));
    config.nesterov = in.read_bool("sgd nesterov");
    config.weight_decay = S(in.read_f64("sgd weight_decay"));
    const Index steps = in.read_count("sgd steps");
    sgd restored = in.validate("sgd settings", [&] { return sgd(config, n_params_, n_decayed_); });
    Vector<S> velocity = in.read_values<S>("sgd velocity", n_params_);
    in.validate("sgd state", [&] { restored.restore(std::move(velocity), steps); });
    *this = std::move(restored);
  }

 private:
  // Elements per block: the slices of params, grad and velocity stay in L1 between the
  // expressions of one block, so the buffers are streamed through memory once per step.
  static constexpr Index block = 512;

  void update_range(Eigen::Ref<Vector<S>>& params, const Eigen::Ref<const Vector<S>>& grad,
                    Index begin, Index end, S decay) {
    const S lr = config_.learning_rate;
    const S mu = config_.momentum;
    for (Index start = begin; start < end; start += block) {
      const Index len = std::min(block, end - start);
      auto p = params.segment(start, len).array();
      // Coupled L2: the decay term is part of the gradient (and so of the momentum).
      const auto g = grad.segment(start, len).array() + decay * p;
      if (mu == S(0)) {
        p -= lr * g;
        continue;
      }
      auto v = velocity_.segment(start, len).array();
      v = mu * v + g;
      if (config_.nesterov) {
        p -= lr * (g + mu * v);
      } else {
        p -= lr * v;
      }
    }
  }

  settings config_;
  Index n_params_;
  Index n_decayed_;
  Vector<S> velocity_;
  Index steps_ = 0;
};

}  // namespace bilevel
