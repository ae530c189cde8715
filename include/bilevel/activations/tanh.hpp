#pragma once
/// \file
/// tanh: f(a) = tanh a, G(a) = log cosh a,
/// G*(z) = ((1 + z) log(1 + z) + (1 - z) log(1 - z)) / 2 on [-1, 1] (docs/methods.md §2).
/// The prox of G* has no closed form; the library solves t a + f(a) = v for it.
///
/// Paper: Zach 2021 (arXiv:2105.07231), whose Fenchel coupling (docs/methods.md §3) uses G and G*.

#include <cmath>
#include <limits>
#include <numbers>
#include <string>

#include "range.hpp"

namespace bilevel {
namespace detail {

/// tanh(x + k) - tanh(x) without cancellation or overflow. With y = x + k it is
/// sinh k / (cosh x cosh y); writing sinh k = tanh(k) cosh k and cosh t = e^|t| (1 + e^-2|t|) / 2,
/// ~~~{.unparsed}
///   tanh y - tanh x = 2 tanh(k) (1 + e^-2|k|) e^(|k| - |x| - |y|) / ((1 + e^-2|x|)(1 + e^-2|y|)),
/// ~~~
/// a product of factors without cancellation whose exponents are all <= 0 (|k| <= |x| + |y|).
/// Its relative error is a few units of roundoff times 1 + |x| + |k| (the rounding of the
/// exponents), which is also the difference's conditioning where tanh saturates.
template <class S>
S tanh_difference(S x, S k) {
  const S y = x + k;
  return 2 * std::tanh(k) * (1 + std::exp(-2 * std::abs(k))) *
         std::exp(std::abs(k) - std::abs(x) - std::abs(y)) /
         ((1 + std::exp(-2 * std::abs(x))) * (1 + std::exp(-2 * std::abs(y))));
}

/// The same over Eigen arrays; every transcendental appears once, since an expression
/// evaluates a repeated subexpression again.
template <class X, class K>
auto tanh_difference_expr(const X& x, const K& k) {
  using S = typename X::Scalar;
  const auto y = x + k;
  return S(2) * k.tanh() * (S(1) + (S(-2) * k.abs()).exp()) *
         (k.abs() - x.abs() - y.abs()).exp() /
         ((S(1) + (S(-2) * x.abs()).exp()) * (S(1) + (S(-2) * y.abs()).exp()));
}

}  // namespace detail

/// The tanh pair, saved under the name "tanh": G(a) = log cosh a, G* finite on [-1, 1].
struct tanh_pair {
  /// Values in (-1, 1), reached only as a -> -inf / +inf (docs/methods.md §5.3).
  static constexpr activation_range range{-1, 1, false};

  std::string name() const { return "tanh"; }
  template <class S> S f(S a) const { return std::tanh(a); }
  /// 1 - tanh^2 a = 1 / cosh^2 a = 4 e / (1 + e)^2 with e = exp(-2 |a|): 1 - tanh^2 would cancel
  /// for large |a|.
  template <class S> S df(S a) const {
    const S e = std::exp(-2 * std::abs(a));
    return 4 * e / ((1 + e) * (1 + e));
  }
  /// log cosh a = |a| + log(1 + e^{-2|a|}) - log 2, which does not overflow.
  template <class S> S G(S a) const {
    const S m = std::abs(a);
    return m + std::log1p(std::exp(-2 * m)) - S(std::numbers::ln2);
  }
  template <class S> S G_conj(S z) const {
    if (!(z >= -1 && z <= 1)) return std::numeric_limits<S>::infinity();
    return (xlogx(1 + z) + xlogx(1 - z)) / 2;
  }
  template <class S> S grad_conj(S z) const { return std::atanh(z); }
  /// tanh(a + h) - tanh(a) = sinh h / (cosh a cosh(a + h)) = tanh(h) (1 - tanh(a) tanh(a + h)),
  /// in a form that neither cancels nor overflows (detail::tanh_difference).
  template <class S> S f_difference(S a, S h) const { return detail::tanh_difference(a, h); }

  template <class A> auto f_expr(const A& a) const { return a.tanh(); }
  template <class A> auto df_expr(const A& a) const {
    using S = typename A::Scalar;
    return S(4) * (S(-2) * a.abs()).exp() / (S(1) + (S(-2) * a.abs()).exp()).square();
  }
  template <class A, class H> auto f_difference_expr(const A& a, const H& h) const {
    return detail::tanh_difference_expr(a, h);
  }

 private:
  template <class S> static S xlogx(S x) { return x > 0 ? x * std::log(x) : S(0); }
};

}  // namespace bilevel
