#pragma once
/// \file
/// Squared error l(z, y) = ||z - y||^2 / 2 per sample (docs/methods.md §1, §4); dl/dz = z - y.

#include <string>
#include <string_view>

#include "../core/error.hpp"
#include "../core/finite.hpp"
#include "../core/types.hpp"

namespace bilevel {

struct mse {
  std::string name() const { return "mse"; }
  /// The norm of its Hessian in z (the identity).
  static constexpr double curvature = 1;

  /// Throws numeric_error naming `function` unless every target is finite.
  template <class S>
  void check_targets(const MatrixCRef<S>& y, std::string_view function) const {
    if (!all_finite(y))
      throw numeric_error(detail::concat(function, ": the targets y must be finite for mse, got ",
                                         "a NaN or Inf entry"));
  }

  template <class S>
  RowVector<S> value(const MatrixCRef<S>& z, const MatrixCRef<S>& y) const {
    RowVector<S> out(z.cols());
    value<S>(z, y, out);
    return out;
  }
  /// The same into `out` (1 x B), without allocating.
  template <class S>
  void value(const MatrixCRef<S>& z, const MatrixCRef<S>& y, Eigen::Ref<RowVector<S>> out) const {
    out.noalias() = (z - y).colwise().squaredNorm() / S(2);
  }

  /// l(z + h, y) - l(z, y) = <z - y, h> + ||h||^2 / 2 per sample, in h (keeps its digits for
  /// small h).
  template <class S>
  void change(const MatrixCRef<S>& z, const MatrixCRef<S>& h, const MatrixCRef<S>& y,
              Eigen::Ref<RowVector<S>> out) const {
    out.noalias() = ((z - y).cwiseProduct(h) + h.cwiseAbs2() / S(2)).colwise().sum();
  }

  /// Per-sample gradient dl/dz (not divided by the batch size, docs/methods.md §1).
  template <class S>
  void gradient(const MatrixCRef<S>& z, const MatrixCRef<S>& y, MatrixRef<S> g) const {
    g = z - y;
  }
};

}  // namespace bilevel
