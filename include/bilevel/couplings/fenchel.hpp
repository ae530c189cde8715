#pragma once
/// \file
/// Fenchel coupling (CHL, LPOM, FLN, Fenchel BP; docs/methods.md §3):
/// E(z, a) = G*(z) + G(a) - <z, a> per sample. E >= 0 with equality iff z = f(a); convex in z and,
/// through a = W z_prev + b, in z_prev and in W separately.

#include "../activations/concept.hpp"
#include "../core/types.hpp"

namespace bilevel {

struct fenchel_coupling {
  template <class S, class P>
  static RowVector<S> value(const P& pair, const MatrixCRef<S>& z, const MatrixCRef<S>& a) {
    RowVector<S> out, scratch;
    value<S>(pair, z, a, out, scratch);
    return out;
  }
  /// The same into `out` (1 x B), with `scratch` for the potential's row: no allocation after
  /// the first batch for elementwise pairs.
  template <class S, class P>
  static void value(const P& pair, const MatrixCRef<S>& z, const MatrixCRef<S>& a,
                    RowVector<S>& out, RowVector<S>& scratch) {
    conjugate<S>(pair, z, out);
    potential<S>(pair, a, scratch);
    out += scratch;
    out -= z.cwiseProduct(a).colwise().sum();
  }
  /// A subgradient in z: dG*(z) - a, with dG*(z) taken from the pair's inverse map.
  template <class S, class P>
  static void gradient_z(const P& pair, const MatrixCRef<S>& z, const MatrixCRef<S>& a,
                         MatrixRef<S> out) {
    grad_conj<S>(pair, z, out);
    out -= a;
  }
  /// dE/da = f(a) - z; dE/dW = (f(a) - z) z_prev^T, dE/dz_prev = W^T (f(a) - z).
  template <class S, class P>
  static void gradient_a(const P& pair, const MatrixCRef<S>& z, const MatrixCRef<S>& a,
                         MatrixRef<S> out) {
    activate<S>(pair, a, out);
    out -= z;
  }
};

}  // namespace bilevel
