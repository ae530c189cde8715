#pragma once
/// \file
/// Penalizer coupling (MAC, PCN, BP; docs/methods.md §3): E(z, a) = ||z - f(a)||^2 / 2 per sample.

#include "../activations/concept.hpp"
#include "../core/types.hpp"

namespace bilevel {

struct penalizer_coupling {
  template <class S, class P>
  static RowVector<S> value(const P& pair, const MatrixCRef<S>& z, const MatrixCRef<S>& a) {
    Matrix<S> fa(a.rows(), a.cols());
    activate<S>(pair, a, fa);
    return (z - fa).colwise().squaredNorm() / S(2);
  }
  /// dE/dz = z - f(a).
  template <class S, class P>
  static void gradient_z(const P& pair, const MatrixCRef<S>& z, const MatrixCRef<S>& a,
                         MatrixRef<S> out) {
    activate<S>(pair, a, out);
    out = z - out;
  }
  /// dE/da = -J_f(a)^T (z - f(a)); dE/dW = (dE/da) z_prev^T, dE/dz_prev = W^T dE/da.
  template <class S, class P>
  static void gradient_a(const P& pair, const MatrixCRef<S>& z, const MatrixCRef<S>& a,
                         MatrixRef<S> out) {
    Matrix<S> residual(a.rows(), a.cols());
    activate<S>(pair, a, residual);
    residual -= z;  // f(a) - z
    vjp<S>(pair, a, residual, out);
  }
};

}  // namespace bilevel
