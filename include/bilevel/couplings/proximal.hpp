#pragma once
/// \file
/// Proximal coupling (docs/methods.md §3): the Fenchel coupling written through phi = G* - ||.||^2/2,
/// for which f = prox_phi:
/// E(z, a) = phi(z) + ||z - a||^2/2 - min_u [phi(u) + ||u - a||^2/2], the minimiser u being f(a).
/// It equals the Fenchel coupling as a function, so its gradients are the same; the value is
/// computed from its own formula (the tests check that the two agree).

#include "../activations/concept.hpp"
#include "../core/types.hpp"
#include "fenchel.hpp"

namespace bilevel {

struct proximal_coupling {
  template <class S, class P>
  static RowVector<S> value(const P& pair, const MatrixCRef<S>& z, const MatrixCRef<S>& a) {
    Matrix<S> u(a.rows(), a.cols());
    activate<S>(pair, a, u);
    const RowVector<S> at_z = phi<S>(pair, z) + (z - a).colwise().squaredNorm() / S(2);
    const RowVector<S> at_u = phi<S>(pair, u) + (u - a).colwise().squaredNorm() / S(2);
    return at_z - at_u;
  }
  template <class S, class P>
  static void gradient_z(const P& pair, const MatrixCRef<S>& z, const MatrixCRef<S>& a,
                         MatrixRef<S> out) {
    fenchel_coupling::gradient_z<S>(pair, z, a, out);
  }
  template <class S, class P>
  static void gradient_a(const P& pair, const MatrixCRef<S>& z, const MatrixCRef<S>& a,
                         MatrixRef<S> out) {
    fenchel_coupling::gradient_a<S>(pair, z, a, out);
  }

 private:
  template <class S, class P>
  static RowVector<S> phi(const P& pair, const MatrixCRef<S>& z) {
    return conjugate<S>(pair, z) - z.colwise().squaredNorm() / S(2);
  }
};

}  // namespace bilevel
