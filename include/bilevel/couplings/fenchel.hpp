#pragma once
/// \file
/// Fenchel coupling (CHL, LPOM, FLN, Fenchel BP; docs/methods.md §3):
/// E(z, a) = G*(z) + G(a) - <z, a> per sample. E >= 0 with equality iff z = f(a); convex in z and,
/// through a = W z_prev + b, in z_prev and in W separately. Also the coupling's contrastive
/// signal as Fenchel BP unravels it (fenchel_signal).

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

/// The Fenchel coupling's linearised contrastive signal, Fenchel BP's error (docs/methods.md
/// §5.2): delta = (f(a) - f(a - beta g)) / beta, the free optimum z = f(a) of E(., a) minus the
/// one clamped by beta <g, z>, divided by beta; given the forward activation z = f(a).
/// Computed as -difference(a, -beta g) / beta where the pair offers an exact difference, so
/// that on one linear piece it is slope * g to rounding for every beta and smooth pairs keep
/// their digits; exactly g for linear pairs. Only pairs without one subtract z - f(a - beta g),
/// whose relative error is about u / beta.
template <class S, ActivationPair<S> P>
void fenchel_signal(const P& pair, const MatrixCRef<S>& a, const MatrixCRef<S>& z,
                    const MatrixCRef<S>& g, S beta, MatrixRef<S> delta) {
  const auto on_block = [&pair, beta](MatrixRef<S> out, const MatrixCRef<S>& a_block,
                                      [[maybe_unused]] const MatrixCRef<S>& z_block,
                                      const MatrixCRef<S>& g_block) {
    if constexpr (detail::linear_pair<P>) {
      out = g_block;
    } else if constexpr (detail::has_columnwise_difference<P, S>) {
      const Matrix<S> step = -beta * g_block;
      pair.f_difference(a_block, MatrixCRef<S>(step), out);
      out /= -beta;
    } else if constexpr (ColumnwisePair<P, S>) {
      const Matrix<S> perturbed = a_block - beta * g_block;
      pair.f(MatrixCRef<S>(perturbed), out);
      out = (z_block - out) / beta;
    } else if constexpr (detail::has_difference_expr<P, S>) {
      out.array() = pair.f_difference_expr(a_block.array(), -beta * g_block.array()) / -beta;
    } else if constexpr (detail::has_scalar_difference<P, S>) {
      out = a_block.binaryExpr(
          g_block, [&pair, beta](S x, S y) { return S(pair.f_difference(x, -beta * y)) / -beta; });
    } else if constexpr (detail::has_f_expr<P, S>) {
      out.array() =
          (z_block.array() - pair.f_expr(a_block.array() - beta * g_block.array())) / beta;
    } else {
      out = z_block - (a_block - beta * g_block).unaryExpr([&pair](S x) { return S(pair.f(x)); });
      out /= beta;
    }
  };
  detail::by_columns<S>(delta, on_block, a, z, g);
}

}  // namespace bilevel
