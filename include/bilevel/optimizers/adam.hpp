#pragma once
// Adam (Kingma & Ba 2015) with bias correction, and AdamW (Loshchilov & Hutter 2019) when
// weight decay is decoupled. Steps one flat parameter buffer laid out as
// [weights ... | biases ...]; weight decay applies to the weight prefix only.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <string_view>
#include <utility>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace bilevel {

template <Scalar S>
class adam {
 public:
  struct settings {
    S learning_rate = S(1e-3);
    S beta1 = S(0.9);
    S beta2 = S(0.999);
    S epsilon = S(1e-8);
    S weight_decay = S(0);
    bool decoupled = false;  // true: AdamW
  };

  /// `n_decayed` is the length of the prefix (the weights) that weight decay applies to.
  adam(settings config, Index n_params, Index n_decayed)
      : config_(config), n_params_(n_params), n_decayed_(n_decayed) {
    detail::require_positive_finite("adam", "learning_rate", config.learning_rate);
    detail::require(std::isfinite(config.beta1) && config.beta1 >= 0 && config.beta1 < 1, "adam",
                    "beta1", "in [0, 1)", config.beta1);
    detail::require(std::isfinite(config.beta2) && config.beta2 >= 0 && config.beta2 < 1, "adam",
                    "beta2", "in [0, 1)", config.beta2);
    detail::require(std::isfinite(config.epsilon) && config.epsilon > 0, "adam", "epsilon", "> 0",
                    config.epsilon);
    detail::require(std::isfinite(config.weight_decay) && config.weight_decay >= 0, "adam",
                    "weight_decay", ">= 0", config.weight_decay);
    detail::require(n_params >= 0, "adam", "n_params", ">= 0", n_params);
    detail::require(n_decayed >= 0 && n_decayed <= n_params, "adam", "n_decayed",
                    detail::concat("in [0, n_params] = [0, ", n_params, "]"), n_decayed);
    m_.setZero(n_params);
    v_.setZero(n_params);
  }

  /// One update with a batch-averaged gradient of the same layout as `params`.
  void step(Eigen::Ref<Vector<S>> params, const Eigen::Ref<const Vector<S>>& grad) {
    detail::require_shape("adam::step", "params", n_params_, 1, params.rows(), params.cols());
    detail::require_shape("adam::step", "grad", n_params_, 1, grad.rows(), grad.cols());
    ++steps_;
    const S t = static_cast<S>(steps_);
    const S lr = config_.learning_rate;
    const S wd = config_.weight_decay;
    // lr * m_hat / (sqrt(v_hat) + eps) with the corrections folded into two scalars:
    // m_hat = m / (1 - beta1^t), sqrt(v_hat) = sqrt(v) / sqrt(1 - beta2^t).
    const S step_size = lr / (S(1) - std::pow(config_.beta1, t));
    const S root_correction = S(1) / std::sqrt(S(1) - std::pow(config_.beta2, t));
    if (config_.decoupled) {
      // AdamW: shrink the weights directly; the moments never see the decay.
      update_range(params, grad, 0, n_decayed_, S(0), S(1) - lr * wd, step_size, root_correction);
    } else {
      // Classic L2: the decay term joins the gradient, so the moments carry it.
      update_range(params, grad, 0, n_decayed_, wd, S(1), step_size, root_correction);
    }
    update_range(params, grad, n_decayed_, n_params_, S(0), S(1), step_size, root_correction);
  }

  void set_learning_rate(S learning_rate) {
    detail::require_positive_finite("adam::set_learning_rate", "learning_rate", learning_rate);
    config_.learning_rate = learning_rate;
  }
  S learning_rate() const { return config_.learning_rate; }
  const settings& config() const { return config_; }
  Index n_params() const { return n_params_; }
  Index n_decayed() const { return n_decayed_; }

  /// Optimiser state, for checkpoints: the moment estimates m and v, and the step count t.
  Index steps() const { return steps_; }
  const Vector<S>& first_moment() const { return m_; }
  const Vector<S>& second_moment() const { return v_; }

  /// Puts back state saved from `first_moment()`, `second_moment()` and `steps()`.
  void restore(Vector<S> first_moment, Vector<S> second_moment, Index steps) {
    detail::require_shape("adam::restore", "first_moment", n_params_, 1, first_moment.rows(),
                          first_moment.cols());
    detail::require_shape("adam::restore", "second_moment", n_params_, 1, second_moment.rows(),
                          second_moment.cols());
    detail::require(steps >= 0, "adam::restore", "steps", ">= 0", steps);
    // A negative (or NaN) second moment would turn every later step into NaN.
    detail::require((second_moment.array() >= S(0)).all(), "adam::restore", "second_moment",
                    "elementwise >= 0", "a negative or NaN entry");
    m_ = std::move(first_moment);
    v_ = std::move(second_moment);
    steps_ = steps;
  }

 private:
  // Elements per block: the slices of params, grad, m and v stay in L1 between the three
  // expressions of one block, so every buffer is streamed through memory once per step.
  static constexpr Index block = 512;

  // `coupled` is the L2 coefficient added to the gradient, `shrink` the AdamW factor on the
  // parameters; (0, 1) leaves a range without decay.
  void update_range(Eigen::Ref<Vector<S>>& params, const Eigen::Ref<const Vector<S>>& grad,
                    Index begin, Index end, S coupled, S shrink, S step_size, S root_correction) {
    const S b1 = config_.beta1;
    const S b2 = config_.beta2;
    const S eps = config_.epsilon;
    for (Index start = begin; start < end; start += block) {
      const Index len = std::min(block, end - start);
      auto p = params.segment(start, len).array();
      auto m = m_.segment(start, len).array();
      auto v = v_.segment(start, len).array();
      const auto g = grad.segment(start, len).array() + coupled * p;
      m = b1 * m + (S(1) - b1) * g;
      v = b2 * v + (S(1) - b2) * g.square();
      p = shrink * p - step_size * m / (v.sqrt() * root_correction + eps);
    }
  }

  settings config_;
  Index n_params_;
  Index n_decayed_;
  Vector<S> m_;
  Vector<S> v_;
  Index steps_ = 0;
};

}  // namespace bilevel
