#pragma once
/// \file
/// Pair operations about a base point, for solvers that iterate on the displacement d = z - z^0
/// from the forward pass z^0 = f(a) instead of on z (docs/methods.md §5.6b): a contrastive
/// estimate divides d by a small spacing, and forming z^0 + d, or f(a + h) - f(a), in floating
/// point would cancel the digits d is made of. Built on the pair's difference f(a + h) - f(a)
/// (activations/concept.hpp), which built-in pairs compute without cancellation.
///
/// * prox_conj_displacement: the proximal map of G* in displacement form,
///   d = prox_{c G*}(f(a) + c a + rho) - f(a), i.e. d = f(a + w) - f(a) where
///   c w + f(a + w) - f(a) = rho: the z-update of a proximal-gradient step on a Fenchel
///   coupling, written about the forward pass.
/// * potential_divergence: the Bregman divergence of the potential,
///   D_G(a + h, a) = G(a + h) - G(a) - <f(a), h> >= 0, per sample: what a fixed-point update of
///   a Fenchel coupling changes its energy by (docs/methods.md §5.5).

#include <algorithm>
#include <cmath>
#include <limits>

#include "../core/error.hpp"
#include "concept.hpp"

namespace bilevel {

namespace detail {

/// f(a + h) - f(a) for one element: the pair's own form where it has one.
template <class S, class P>
S scalar_difference(const P& pair, S a, S h) {
  if constexpr (linear_pair<P>)
    return h;
  else if constexpr (has_scalar_difference<P, S>)
    return S(pair.f_difference(a, h));
  else
    return S(pair.f(a + h)) - S(pair.f(a));
}

/// Solves c w + f(a + w) - f(a) = rho for one element and returns f(a + w) - f(a). The left side
/// increases in w with slope >= c (f is monotone), so Newton steps are kept inside a bracket
/// that the slope bound gives at once. A Newton step is taken where it stays inside and the
/// last one at least halved the bracket; otherwise the bracket is halved. Newton alone can
/// cycle: where f saturates on both sides of the root (tanh, sigmoid), steps from either end
/// of the bracket land near the other end and the bracket hardly shrinks. With a halving at
/// least every second step, the bracket collapses to rounding within the iterations. The first
/// trial, rho / (c + f'(a)), is exact when a + w stays on a's linear piece.
template <class S, class P>
S solve_displacement(const P& pair, S a, S rho, S c) {
  const S unit = std::numeric_limits<S>::epsilon();
  S w = rho / (c + S(pair.df(a)));
  S low = -std::numeric_limits<S>::infinity(), high = std::numeric_limits<S>::infinity();
  for (int iteration = 0; iteration < 4 * std::numeric_limits<S>::digits; ++iteration) {
    const S difference = scalar_difference<S>(pair, a, w);
    const S excess = c * w + difference - rho;
    if (std::abs(excess) <= 4 * unit * (c * std::abs(w) + std::abs(difference) + std::abs(rho)))
      return difference;
    const S width = high - low;
    // The slope is at least c: w - excess / c lies on the other side of the root.
    if (excess > 0) {
      high = w;
      low = std::max(low, w - excess / c);
    } else {
      low = w;
      high = std::min(high, w - excess / c);
    }
    const S newton = w - excess / (c + S(pair.df(a + w)));
    const bool halved = high - low <= width / 2;  // width is +inf before the first bracket
    w = halved && newton > low && newton < high ? newton : low + (high - low) / 2;
    if (!(high - low > unit * std::max(std::abs(low), std::abs(high)))) break;
  }
  return scalar_difference<S>(pair, a, w);
}

}  // namespace detail

/// d = prox_{c G*}(f(a) + c a + rho) - f(a) per element or column (c > 0), without forming the
/// sum: see the file comment. In closed form for pairs that give prox_conj_difference (the
/// built-in ReLU-type ones); columnwise pairs take the direct form.
template <class S, ActivationPair<S> P>
void prox_conj_displacement(const P& pair, const MatrixCRef<S>& a, const MatrixCRef<S>& rho,
                            S c, MatrixRef<S> d) {
  const auto on_block = [&pair, c](MatrixRef<S> out, const MatrixCRef<S>& base,
                                   const MatrixCRef<S>& shift) {
    if constexpr (ColumnwisePair<P, S>) {
      Matrix<S> forward(base.rows(), base.cols());
      pair.f(base, MatrixRef<S>(forward));
      const Matrix<S> argument = forward + c * base + shift;
      pair.prox_conj(MatrixCRef<S>(argument), c, out);
      out -= forward;
    } else if constexpr (detail::has_prox_conj_difference_expr<P, S>) {
      out.array() = pair.prox_conj_difference_expr(base.array(), shift.array(), c);
    } else if constexpr (detail::has_scalar_prox_conj_difference<P, S>) {
      out = base.binaryExpr(
          shift, [&pair, c](S x, S r) { return S(pair.prox_conj_difference(x, r, c)); });
    } else {
      for (Index j = 0; j < out.cols(); ++j)
        for (Index i = 0; i < out.rows(); ++i)
          out(i, j) = detail::solve_displacement<S>(pair, base(i, j), shift(i, j), c);
    }
  };
  detail::by_columns<S>(d, on_block, a, rho);
}

/// Per sample (column): sum over its entries of D_G(a + h, a) = G(a + h) - G(a) - f(a) h,
/// into `out` (1 x B, sized by the caller). Exact per linear piece of f for linear pairs and
/// pairs that give G_divergence(a, h) (the built-in piecewise-linear ones); the direct form
/// otherwise.
template <class S, ActivationPair<S> P>
void potential_divergence(const P& pair, const MatrixCRef<S>& a, const MatrixCRef<S>& h,
                          RowVectorRef<S> out) {
  detail::require(out.size() == a.cols(), "potential_divergence", "columns of out",
                  a.cols(), out.size());
  if constexpr (ColumnwisePair<P, S>) {
    Matrix<S> forward(a.rows(), a.cols());
    pair.f(a, MatrixRef<S>(forward));
    const Matrix<S> moved = a + h;
    out = pair.G(MatrixCRef<S>(moved)) - pair.G(a) - forward.cwiseProduct(h).colwise().sum();
  } else if constexpr (detail::has_divergence_expr<P, S>) {
    out = pair.G_divergence_expr(a.array(), h.array()).colwise().sum().matrix();
  } else {
    for (Index j = 0; j < a.cols(); ++j) {
      S sum = 0;
      for (Index i = 0; i < a.rows(); ++i) {
        const S x = a(i, j), step = h(i, j);
        if constexpr (detail::linear_pair<P>)
          sum += step * step / 2;
        else if constexpr (detail::has_scalar_divergence<P, S>)
          sum += S(pair.G_divergence(x, step));
        else
          sum += S(pair.G(x + step)) - S(pair.G(x)) - S(pair.f(x)) * step;
      }
      out(j) = sum;
    }
  }
}

}  // namespace bilevel
