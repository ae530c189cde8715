#pragma once
/// \file
/// What an activation pair is (docs/methods.md §2), and the batch operations every method calls.
///
/// A pair is a plain struct, no base class. It comes in one of two forms:
///
/// * elementwise (most activations): scalar members
///   ~~~{.unparsed}
///       name()            a string for serialisation and messages
///       f(a)              the activation, f = G'
///       df(a)             its derivative, one-sided at kinks (ReLU'(0) = 0, leaky: the slope)
///       G(a)              the convex potential
///       G_conj(z)         its convex conjugate, +inf outside its domain
///   and optionally, where a closed form exists (otherwise the library solves for them):
///       grad_conj(z)      an element of dG*(z), i.e. some a with f(a) = z (the inverse map)
///       prox_conj(v, t)   argmin_z t G*(z) + (z - v)^2 / 2
///   and optionally vectorised forms f_expr / df_expr over Eigen arrays for speed, and
///       f_difference(a, h)        f(a + h) - f(a) without cancellation (exact per linear piece
///                                 of a piecewise-linear f, a cancellation-free closed form for a
///                                 smooth one), optionally vectorised as f_difference_expr(a, h)
///       G_divergence(a, h)        G(a + h) - G(a) - f(a) h >= 0 without cancellation (the
///                                 Bregman divergence LPOM's safeguard reads; activations/
///                                 displacement.hpp), optionally vectorised as G_divergence_expr
///       prox_conj_difference(a, rho, c)   the d = f(a + w) - f(a) with c w + d = rho (c > 0) in
///                                 closed form (the lifted solvers' z-update about the forward
///                                 pass, displacement.hpp; solved by safeguarded Newton steps
///                                 otherwise), optionally vectorised as prox_conj_difference_expr
///   A pair whose slope is bounded by less than 1 may say so (any pair form):
///       static constexpr double max_slope    sup |f'| (sup ||J_f||_2 for columnwise pairs)
///   where a method sizes its steps by curvature (AltMin); 1 is assumed otherwise, the bound of
///   every other built-in pair.
///   A pair with parameters of its own (leaky ReLU's slope) gives both of
///       hyperparameters()         -> std::vector<double>
///       set_hyperparameters(v)    from such a vector, validating it
///   so that checkpoints save and restore them (any pair form).
///   A pair whose values are bounded says so, for EP's Hopfield energy (docs/methods.md §5.3):
///       static constexpr activation_range range{lower, upper, clips};
///   ~~~
///
/// * columnwise (softmax): members over a batch (one sample per column)
///   ~~~{.unparsed}
///       name(), f(A, Z), vjp(A, V, Out) = J_f(A)^T V, G(A) and G_conj(Z) per column,
///       grad_conj(Z, Out), prox_conj(V, t, Out), optionally f_difference(A, H, Out); inputs
///       as MatrixCRef<S>, outputs as MatrixRef<S>, so blocks of columns pass without copies.
///   ~~~
///
/// The free functions below (activate, vjp, potential, conjugate, grad_conj, prox_conj,
/// difference) give both forms one batch interface, so methods never care which it is.

#include <cmath>
#include <concepts>
#include <limits>
#include <string>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "range.hpp"

namespace bilevel {

template <class P, class S>
concept ElementwisePair = Scalar<S> && requires(const P& pair, S x) {
  { pair.name() } -> std::convertible_to<std::string>;
  { pair.f(x) } -> std::convertible_to<S>;
  { pair.df(x) } -> std::convertible_to<S>;
  { pair.G(x) } -> std::convertible_to<S>;
  { pair.G_conj(x) } -> std::convertible_to<S>;
};

template <class P, class S>
concept ColumnwisePair =
    Scalar<S> && requires(const P& pair, const MatrixCRef<S>& in, MatrixRef<S> out, S t) {
      { pair.name() } -> std::convertible_to<std::string>;
      pair.f(in, out);
      pair.vjp(in, in, out);
      { pair.G(in) } -> std::convertible_to<RowVector<S>>;
      { pair.G_conj(in) } -> std::convertible_to<RowVector<S>>;
      pair.grad_conj(in, out);
      pair.prox_conj(in, t, out);
    };

/// An activation f = grad G with its conjugate G*, usable by every method for scalar type S.
/// If this fails for your struct, the compiler names the first missing member of
/// ElementwisePair (name, f, df, G, G_conj taking and returning S).
template <class P, class S>
concept ActivationPair = ElementwisePair<P, S> || ColumnwisePair<P, S>;

namespace detail {

template <class P, class S>
concept has_scalar_grad_conj = requires(const P& pair, S z) {
  { pair.grad_conj(z) } -> std::convertible_to<S>;
};
template <class P, class S>
concept has_scalar_prox_conj = requires(const P& pair, S v, S t) {
  { pair.prox_conj(v, t) } -> std::convertible_to<S>;
};
template <class P, class S>
concept has_f_expr = requires(const P& pair, const Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic>& a) {
  pair.f_expr(a);
};
template <class P, class S>
concept has_df_expr = requires(const P& pair, const Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic>& a) {
  pair.df_expr(a);
};
template <class P>
concept has_hyperparameters = requires(const P& pair, P& target, const std::vector<double>& values) {
  { pair.hyperparameters() } -> std::convertible_to<std::vector<double>>;
  target.set_hyperparameters(values);
};
/// Pairs with `static constexpr bool linear = true` (the identity) have f(a + h) - f(a) = h
/// exactly, so the Fenchel BP signal is g itself with no rounding from the difference.
template <class P>
concept linear_pair = requires { requires P::linear; };
template <class P, class S>
concept has_scalar_difference = requires(const P& pair, S a, S h) {
  { pair.f_difference(a, h) } -> std::convertible_to<S>;
};
template <class P, class S>
concept has_scalar_divergence = requires(const P& pair, S a, S h) {
  { pair.G_divergence(a, h) } -> std::convertible_to<S>;
};
template <class P, class S>
concept has_divergence_expr =
    requires(const P& pair, const Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic>& a) {
      pair.G_divergence_expr(a, a);
    };
template <class P, class S>
concept has_scalar_prox_conj_difference = requires(const P& pair, S a, S rho, S c) {
  { pair.prox_conj_difference(a, rho, c) } -> std::convertible_to<S>;
};
template <class P, class S>
concept has_prox_conj_difference_expr =
    requires(const P& pair, const Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic>& a, S c) {
      pair.prox_conj_difference_expr(a, a, c);
    };
template <class P, class S>
concept has_difference_expr =
    requires(const P& pair, const Eigen::Array<S, Eigen::Dynamic, Eigen::Dynamic>& a) {
      pair.f_difference_expr(a, a);
    };
template <class P, class S>
concept has_columnwise_difference =
    requires(const P& pair, const MatrixCRef<S>& in, MatrixRef<S> out) {
      pair.f_difference(in, in, out);
    };
/// Pairs whose difference f(a + h) - f(a) keeps its digits however small h is: the linear ones
/// and those with an f_difference member. For the others, difference() subtracts f(a + h) and
/// f(a), whose relative error is about u |f(a)| / |f(a + h) - f(a)|, ~ u / |h| for slopes of
/// order 1 (u the unit roundoff of S).
template <class P, class S>
concept has_exact_difference = linear_pair<P> || has_scalar_difference<P, S> ||
                               has_difference_expr<P, S> || has_columnwise_difference<P, S>;

/// sup |f'| of a pair (sup ||J_f||_2 for columnwise pairs): its `max_slope`, or 1.
template <class P>
constexpr double max_slope() {
  if constexpr (requires { P::max_slope; })
    return P::max_slope;
  else
    return 1;
}

/// Solves `t a + f(a) = v` for a (strictly increasing in a since f is monotone, t > 0) by
/// bracketing and bisection; used where a pair gives no closed form.
template <class S, class F>
S solve_monotone(F&& h, S target) {
  S low = -1, high = 1;
  while (h(low) > target) low *= 2;
  while (h(high) < target) high *= 2;
  for (int i = 0; i < 200; ++i) {
    const S mid = low + (high - low) / 2;
    if (mid <= low || mid >= high) break;
    (h(mid) < target ? low : high) = mid;
  }
  return low + (high - low) / 2;
}

/// op(out, in...) on blocks of consecutive columns of out and of every input, in parallel where
/// that pays (core/parallel.hpp): the batch operations below treat every column on its own.
template <class S, class Op, class... Inputs>
void by_columns(MatrixRef<S> out, const Op& op, const Inputs&... in) {
  parallel_columns(out.rows(), out.cols(), [&](Index first, Index count) {
    op(MatrixRef<S>(out.middleCols(first, count)), MatrixCRef<S>(in.middleCols(first, count))...);
  });
}

}  // namespace detail

/// z = f(a), column by column.
template <class S, ActivationPair<S> P>
void activate(const P& pair, const MatrixCRef<S>& a, MatrixRef<S> z) {
  const auto on_block = [&pair](MatrixRef<S> out, const MatrixCRef<S>& in) {
    if constexpr (ColumnwisePair<P, S>) {
      pair.f(in, out);
    } else if constexpr (detail::has_f_expr<P, S>) {
      out.array() = pair.f_expr(in.array());
    } else {
      out = in.unaryExpr([&pair](S x) { return S(pair.f(x)); });
    }
  };
  detail::by_columns<S>(z, on_block, a);
}

/// out = J_f(a)^T v per column (elementwise pairs: f'(a) .* v).
template <class S, ActivationPair<S> P>
void vjp(const P& pair, const MatrixCRef<S>& a, const MatrixCRef<S>& v, MatrixRef<S> out) {
  const auto on_block = [&pair](MatrixRef<S> o, const MatrixCRef<S>& in, const MatrixCRef<S>& w) {
    if constexpr (ColumnwisePair<P, S>) {
      pair.vjp(in, w, o);
    } else if constexpr (detail::has_df_expr<P, S>) {
      o.array() = pair.df_expr(in.array()) * w.array();
    } else {
      o = in.binaryExpr(w, [&pair](S x, S u) { return S(pair.df(x)) * u; });
    }
  };
  detail::by_columns<S>(out, on_block, a, v);
}

/// G(a) per sample (column), into `out` (resized to 1 x B; no allocation after the first batch
/// for elementwise pairs, whose column sums are taken without a temporary).
template <class S, ActivationPair<S> P>
void potential(const P& pair, const MatrixCRef<S>& a, RowVector<S>& out) {
  if constexpr (ColumnwisePair<P, S>) {
    out = pair.G(a);
  } else {
    out.resize(a.cols());
    out.noalias() = a.unaryExpr([&pair](S x) { return S(pair.G(x)); }).colwise().sum();
  }
}

/// G(a) per sample (column).
template <class S, ActivationPair<S> P>
RowVector<S> potential(const P& pair, const MatrixCRef<S>& a) {
  RowVector<S> out;
  potential<S>(pair, a, out);
  return out;
}

/// G*(z) per sample (column), into `out` as potential(); +inf for a column outside the domain.
template <class S, ActivationPair<S> P>
void conjugate(const P& pair, const MatrixCRef<S>& z, RowVector<S>& out) {
  if constexpr (ColumnwisePair<P, S>) {
    out = pair.G_conj(z);
  } else {
    out.resize(z.cols());
    out.noalias() = z.unaryExpr([&pair](S x) { return S(pair.G_conj(x)); }).colwise().sum();
  }
}

/// G*(z) per sample (column); +inf for a column outside the domain.
template <class S, ActivationPair<S> P>
RowVector<S> conjugate(const P& pair, const MatrixCRef<S>& z) {
  RowVector<S> out;
  conjugate<S>(pair, z, out);
  return out;
}

/// out = an element of dG*(z): pre-activations a with f(a) = z (the inverse map).
template <class S, ActivationPair<S> P>
void grad_conj(const P& pair, const MatrixCRef<S>& z, MatrixRef<S> out) {
  if constexpr (ColumnwisePair<P, S>) {
    pair.grad_conj(z, out);
  } else if constexpr (detail::has_scalar_grad_conj<P, S>) {
    out = z.unaryExpr([&pair](S x) { return S(pair.grad_conj(x)); });
  } else {
    // f is monotone: the smallest t -> 0 limit of t a + f(a) = z picks a preimage of z.
    const S tiny = std::sqrt(std::numeric_limits<S>::epsilon());
    out = z.unaryExpr([&pair, tiny](S x) {
      return detail::solve_monotone<S>([&pair, tiny](S a) { return tiny * a + S(pair.f(a)); }, x);
    });
  }
}

/// out = prox_{t G*}(v) = argmin_z t G*(z) + ||z - v||^2 / 2, per column.
/// Optimality (Moreau): z = f((v - z) / t), which is what the pair checker verifies.
template <class S, ActivationPair<S> P>
void prox_conj(const P& pair, const MatrixCRef<S>& v, S t, MatrixRef<S> out) {
  if constexpr (ColumnwisePair<P, S>) {
    pair.prox_conj(v, t, out);
  } else if constexpr (detail::has_scalar_prox_conj<P, S>) {
    out = v.unaryExpr([&pair, t](S x) { return S(pair.prox_conj(x, t)); });
  } else {
    out = v.unaryExpr([&pair, t](S x) {
      const S a = detail::solve_monotone<S>([&pair, t](S u) { return t * u + S(pair.f(u)); }, x);
      return S(pair.f(a));
    });
  }
}

/// out = f(a + h) - f(a), column by column, from the pair's f_difference where it has one (no
/// cancellation: exact per linear piece, cancellation-free for smooth pairs), h itself for linear
/// pairs, and otherwise by subtracting f(a) from f(a + h), which loses about u / |h| of the
/// result's relative accuracy (u the unit roundoff of S).
template <class S, ActivationPair<S> P>
void difference(const P& pair, const MatrixCRef<S>& a, const MatrixCRef<S>& h, MatrixRef<S> out) {
  if constexpr (detail::linear_pair<P>) {
    out = h;
    return;
  }
  const auto on_block = [&pair](MatrixRef<S> o, const MatrixCRef<S>& a_block,
                                const MatrixCRef<S>& h_block) {
    if constexpr (detail::has_columnwise_difference<P, S>) {
      pair.f_difference(a_block, h_block, o);
    } else if constexpr (ColumnwisePair<P, S>) {
      const Matrix<S> shifted = a_block + h_block;
      Matrix<S> base(a_block.rows(), a_block.cols());
      pair.f(MatrixCRef<S>(shifted), o);
      pair.f(a_block, MatrixRef<S>(base));
      o -= base;
    } else if constexpr (detail::has_difference_expr<P, S>) {
      o.array() = pair.f_difference_expr(a_block.array(), h_block.array());
    } else if constexpr (detail::has_scalar_difference<P, S>) {
      o = a_block.binaryExpr(h_block, [&pair](S x, S y) { return S(pair.f_difference(x, y)); });
    } else if constexpr (detail::has_f_expr<P, S>) {
      o.array() = pair.f_expr(a_block.array() + h_block.array()) - pair.f_expr(a_block.array());
    } else {
      o = a_block.binaryExpr(h_block, [&pair](S x, S y) { return S(pair.f(x + y)) - S(pair.f(x)); });
    }
  };
  detail::by_columns<S>(out, on_block, a, h);
}

}  // namespace bilevel
