#pragma once
/// \file
/// Softmax cross-entropy on the output layer's values taken as logits (the output activation
/// folded into the loss, docs/methods.md §1): l(a, y) = (sum y) logsumexp(a) - <y, a>, per sample.
/// Use it with an identity output pair; dl/da = softmax(a) (sum y) - y.

#include <cmath>
#include <limits>
#include <string>
#include <string_view>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace bilevel {

struct softmax_cross_entropy {
  std::string name() const { return "softmax_cross_entropy"; }
  /// A bound on the norm of its Hessian in the logits, (sum y) (diag(p) - p p^T), for targets
  /// summing to 1 (||diag(p) - p p^T||_2 <= 1/2 by Gershgorin).
  static constexpr double curvature = 0.5;

  /// Throws config_error naming `function` unless every column of y is a probability vector:
  /// entries >= 0 summing to 1 within sqrt(epsilon) (one-hot or soft labels). Other targets make
  /// the loss unbounded below (negative entries) or rescale it silently.
  template <class S>
  void check_targets(const MatrixCRef<S>& y, std::string_view function) const {
    const S tolerance = std::sqrt(std::numeric_limits<S>::epsilon());
    for (Index j = 0; j < y.cols(); ++j) {
      const S sum = y.col(j).sum();
      if (!((y.col(j).array() >= S(0)).all() && std::abs(sum - S(1)) <= tolerance))
        throw config_error(detail::concat(
            function, ": the targets y of softmax_cross_entropy must be probability vectors "
            "(entries >= 0 summing to 1), got column ", j, " with minimum ", y.col(j).minCoeff(),
            " and sum ", sum));
    }
  }

  template <class S>
  RowVector<S> value(const MatrixCRef<S>& logits, const MatrixCRef<S>& y) const {
    RowVector<S> out(logits.cols());
    value<S>(logits, y, out);
    return out;
  }
  /// The same into `out` (1 x B), without allocating.
  template <class S>
  void value(const MatrixCRef<S>& logits, const MatrixCRef<S>& y, Eigen::Ref<RowVector<S>> out) const {
    for (Index j = 0; j < logits.cols(); ++j) {
      const S top = logits.col(j).maxCoeff();
      const S lse = top + std::log((logits.col(j).array() - top).exp().sum());
      out(j) = y.col(j).sum() * lse - y.col(j).dot(logits.col(j));
    }
  }

  /// l(a + h, y) - l(a, y) per sample, in h: (sum y) log(1 + sum_i p_i (e^{h_i} - 1)) - <y, h>
  /// with p = softmax(a), which keeps its digits for small h (the difference of two values
  /// rounds at u logsumexp(a)).
  template <class S>
  void change(const MatrixCRef<S>& logits, const MatrixCRef<S>& h, const MatrixCRef<S>& y,
              Eigen::Ref<RowVector<S>> out) const {
    for (Index j = 0; j < logits.cols(); ++j) {
      const S top = logits.col(j).maxCoeff();
      const auto weights = (logits.col(j).array() - top).exp();
      const S moved = (weights * h.col(j).array().expm1()).sum() / weights.sum();
      out(j) = y.col(j).sum() * std::log1p(moved) - y.col(j).dot(h.col(j));
    }
  }

  /// Per-sample gradient dl/dlogits (not divided by the batch size, docs/methods.md §1).
  template <class S>
  void gradient(const MatrixCRef<S>& logits, const MatrixCRef<S>& y, MatrixRef<S> g) const {
    for (Index j = 0; j < logits.cols(); ++j) {
      const S top = logits.col(j).maxCoeff();
      g.col(j) = (logits.col(j).array() - top).exp().matrix();
      g.col(j) *= y.col(j).sum() / g.col(j).sum();
      g.col(j) -= y.col(j);
    }
  }
};

}  // namespace bilevel
