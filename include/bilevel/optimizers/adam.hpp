#pragma once
/// \file
/// Adam (Kingma & Ba 2015) with bias correction, and AdamW (Loshchilov & Hutter 2019) when
/// weight decay is decoupled. Steps one flat parameter buffer laid out as
/// [weights ... | biases ...]; weight decay applies to the weight prefix only.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <string_view>
#include <utility>

#include "../core/error.hpp"
#include "../core/finite.hpp"
#include "../core/parallel.hpp"
#include "../core/state_stream.hpp"
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
                    detail::parts("in [0, n_params] = [0, ", n_params, "]"), n_decayed);
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
    // A non-finite moment or a negative second moment would turn every later step into NaN.
    detail::require(all_finite(first_moment), "adam::restore", "first_moment", "finite",
                    "a NaN or Inf entry");
    detail::require(all_finite(second_moment) && (second_moment.array() >= S(0)).all(),
                    "adam::restore", "second_moment", "finite and elementwise >= 0",
                    "a negative, NaN or Inf entry");
    m_ = std::move(first_moment);
    v_ = std::move(second_moment);
    steps_ = steps;
  }

  /// Settings (a scheduled learning rate is state too), moments and step count.
  void save_state(state_writer& out) const {
    out.write_text("adam");
    out.write_index(n_params_);
    out.write_index(n_decayed_);
    out.write_f64(double(config_.learning_rate));
    out.write_f64(double(config_.beta1));
    out.write_f64(double(config_.beta2));
    out.write_f64(double(config_.epsilon));
    out.write_f64(double(config_.weight_decay));
    out.write_bool(config_.decoupled);
    out.write_index(steps_);
    out.write_values<S>(m_);
    out.write_values<S>(v_);
  }

  /// Restores what save_state wrote; the parameter layout must be this optimizer's.
  void load_state(state_reader& in) {
    adam restored = read_state(in);
    if (restored.n_params_ != n_params_)
      in.fail("adam parameter count", n_params_, restored.n_params_);
    if (restored.n_decayed_ != n_decayed_)
      in.fail("adam decayed parameter count", n_decayed_, restored.n_decayed_);
    *this = std::move(restored);
  }

  /// An optimizer built from what save_state wrote, whatever its layout.
  static adam read_state(state_reader& in) {
    in.expect_text("adam", "optimizer");
    const Index n_params = in.read_index("adam parameter count");
    const Index n_decayed = in.read_index("adam decayed parameter count");
    settings config;
    config.learning_rate = S(in.read_f64("adam learning_rate"));
    config.beta1 = S(in.read_f64("adam beta1"));
    config.beta2 = S(in.read_f64("adam beta2"));
    config.epsilon = S(in.read_f64("adam epsilon"));
    config.weight_decay = S(in.read_f64("adam weight_decay"));
    config.decoupled = in.read_bool("adam decoupled");
    const Index steps = in.read_count("adam steps");
    // The moments come first: their lengths are bounded by the bytes present, so a corrupt
    // count cannot make the constructor allocate without limit.
    Vector<S> m = in.read_values<S>("adam first moment");
    Vector<S> v = in.read_values<S>("adam second moment", m.size());
    if (n_params != m.size()) in.fail("adam parameter count", m.size(), n_params);
    return in.validate("adam state", [&] {
      adam restored(config, n_params, n_decayed);
      restored.restore(std::move(m), std::move(v), steps);
      return restored;
    });
  }

 private:
  // Elements per block: the slices of params, grad, m and v stay in L1 between the three
  // expressions of one block, so every buffer is streamed through memory once per step.
  // Threads take contiguous runs of whole blocks (every element is independent).
  static constexpr Index block = 512;

  // `coupled` is the L2 coefficient added to the gradient, `shrink` the AdamW factor on the
  // parameters; (0, 1) leaves a range without decay.
  void update_range(Eigen::Ref<Vector<S>>& params, const Eigen::Ref<const Vector<S>>& grad,
                    Index begin, Index end, S coupled, S shrink, S step_size, S root_correction) {
    const S b1 = config_.beta1;
    const S b2 = config_.beta2;
    const S eps = config_.epsilon;
    detail::parallel_ranges(end - begin, 1, block, [&](Index first, Index last) {
      for (Index start = begin + first; start < begin + last; start += block) {
        const Index len = std::min(block, begin + last - start);
        auto p = params.segment(start, len).array();
        auto m = m_.segment(start, len).array();
        auto v = v_.segment(start, len).array();
        const auto g = grad.segment(start, len).array() + coupled * p;
        m = b1 * m + (S(1) - b1) * g;
        v = b2 * v + (S(1) - b2) * g.square();
        p = shrink * p - step_size * m / (v.sqrt() * root_correction + eps);
      }
    });
  }

  settings config_;
  Index n_params_;
  Index n_decayed_;
  Vector<S> m_;
  Vector<S> v_;
  Index steps_ = 0;
};

}  // namespace bilevel
