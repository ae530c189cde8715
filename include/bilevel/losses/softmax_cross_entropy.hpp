#pragma once
// Softmax cross-entropy on the output layer's values taken as logits (the output activation
// folded into the loss, docs/methods.md §1): l(a, y) = (sum y) logsumexp(a) - <y, a>, per sample.
// Use it with an identity output pair; dl/da = softmax(a) (sum y) - y.

#include <cmath>
#include <string>

#include "../core/types.hpp"

namespace bilevel {

struct softmax_cross_entropy {
  std::string name() const { return "softmax_cross_entropy"; }
  /// A bound on the norm of its Hessian in the logits, (sum y) (diag(p) - p p^T), for targets
  /// summing to 1 (||diag(p) - p p^T||_2 <= 1/2 by Gershgorin).
  static constexpr double curvature = 0.5;

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
