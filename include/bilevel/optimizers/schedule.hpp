#pragma once
/// \file
/// Learning-rate schedules over (0-based) epochs, as a small copyable value:
///   auto schedule = lr_schedule<float>::cosine(1e-3f, 50);
///   optimizer.set_learning_rate(schedule.at(epoch));

#include <cmath>
#include <numbers>
#include <string>
#include <string_view>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace bilevel {

template <Scalar S>
struct lr_schedule {
  enum class kind_type { constant, step_decay, cosine };

  /// `lr` at every epoch.
  static lr_schedule constant(S lr) {
    check_lr("lr_schedule::constant", lr);
    return lr_schedule(kind_type::constant, lr);
  }

  /// lr * factor^floor(epoch / every_epochs), with factor in (0, 1].
  static lr_schedule step_decay(S lr, Index every_epochs, S factor) {
    check_lr("lr_schedule::step_decay", lr);
    detail::require(every_epochs >= 1, "lr_schedule::step_decay", "every_epochs", ">= 1",
                    every_epochs);
    detail::require(factor > 0 && factor <= 1, "lr_schedule::step_decay", "factor", "in (0, 1]",
                    factor);
    lr_schedule schedule(kind_type::step_decay, lr);
    schedule.every_epochs_ = every_epochs;
    schedule.factor_ = factor;
    return schedule;
  }

  /// min_lr + (lr - min_lr) (1 + cos(pi epoch / total_epochs)) / 2, and min_lr from
  /// total_epochs on. With min_lr = 0 the rate reaches 0 only after the last epoch
  /// (total_epochs - 1), so every training epoch gets a positive rate.
  static lr_schedule cosine(S lr, Index total_epochs, S min_lr = S(0)) {
    check_lr("lr_schedule::cosine", lr);
    detail::require(total_epochs >= 1, "lr_schedule::cosine", "total_epochs", ">= 1", total_epochs);
    detail::require(min_lr >= 0 && min_lr <= lr, "lr_schedule::cosine", "min_lr",
                    detail::parts("in [0, lr] = [0, ", lr, "]"), min_lr);
    lr_schedule schedule(kind_type::cosine, lr);
    schedule.total_epochs_ = total_epochs;
    schedule.min_lr_ = min_lr;
    return schedule;
  }

  /// The learning rate for `epoch` (0-based).
  S at(Index epoch) const {
    detail::require(epoch >= 0, "lr_schedule::at", "epoch", ">= 0", epoch);
    switch (kind_) {
      case kind_type::step_decay:
        return lr_ * std::pow(factor_, static_cast<S>(epoch / every_epochs_));
      case kind_type::cosine: {
        if (epoch >= total_epochs_) return min_lr_;
        const S phase =
            std::numbers::pi_v<S> * static_cast<S>(epoch) / static_cast<S>(total_epochs_);
        return min_lr_ + (lr_ - min_lr_) * (S(1) + std::cos(phase)) / S(2);
      }
      case kind_type::constant:
        break;
    }
    return lr_;
  }

  /// For logs, e.g. "cosine(lr=0.001, epochs=50, min=0)".
  std::string describe() const {
    switch (kind_) {
      case kind_type::step_decay:
        return detail::concat("step_decay(lr=", lr_, ", every=", every_epochs_,
                              ", factor=", factor_, ")");
      case kind_type::cosine:
        return detail::concat("cosine(lr=", lr_, ", epochs=", total_epochs_, ", min=", min_lr_,
                              ")");
      case kind_type::constant:
        break;
    }
    return detail::concat("constant(lr=", lr_, ")");
  }

  kind_type kind() const { return kind_; }
  /// The rate at epoch 0.
  S base_lr() const { return lr_; }

  friend bool operator==(const lr_schedule&, const lr_schedule&) = default;

 private:
  lr_schedule(kind_type kind, S lr) : kind_(kind), lr_(lr) {}

  static void check_lr(std::string_view function, S lr) {
    detail::require(std::isfinite(lr), function, "lr", "finite", lr);
    detail::require(lr > 0, function, "lr", "> 0", lr);
  }

  // Parameters a kind does not use keep these neutral values, so == compares like with like.
  kind_type kind_;
  S lr_;
  Index every_epochs_ = 1;
  S factor_ = S(1);
  Index total_epochs_ = 1;
  S min_lr_ = S(0);
};

}  // namespace bilevel
