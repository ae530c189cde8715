#pragma once
/// \file
/// Logistic sigmoid: f(a) = 1/(1 + e^-a), G(a) = log(1 + e^a) (softplus),
/// G*(z) = z log z + (1 - z) log(1 - z) on [0, 1] with 0 log 0 = 0 (docs/methods.md §2).
/// The prox of G* has no closed form; the library solves t a + f(a) = v for it.
///
/// Paper: Zach 2021 (arXiv:2105.07231), whose Fenchel coupling (docs/methods.md §3) uses G and G*.

#include <cmath>
#include <limits>
#include <string>

#include "tanh.hpp"
#include "range.hpp"

namespace bilevel {

/// The logistic sigmoid pair: G = softplus, G* = z log z + (1 - z) log(1 - z) on [0, 1].
struct sigmoid {
  /// Values in (0, 1), reached only as a -> -inf / +inf (docs/methods.md §5.3).
  static constexpr activation_range range{0, 1, false};

  std::string name() const { return "sigmoid"; }
  /// f' = f (1 - f) <= 1/4.
  static constexpr double max_slope = 0.25;
  template <class S> S f(S a) const {
    // Written through e^-|a| so that neither branch overflows.
    const S e = std::exp(-std::abs(a));
    return a >= 0 ? 1 / (1 + e) : e / (1 + e);
  }
  /// f (1 - f) written as f(a) f(-a): 1 - f(a) would cancel for large a.
  template <class S> S df(S a) const { return f(a) * f(-a); }
  template <class S> S G(S a) const { return std::max(a, S(0)) + std::log1p(std::exp(-std::abs(a))); }
  template <class S> S G_conj(S z) const {
    if (!(z >= 0 && z <= 1)) return std::numeric_limits<S>::infinity();
    return xlogx(z) + xlogx(1 - z);
  }
  /// The logit; +-inf at the ends of [0, 1].
  template <class S> S grad_conj(S z) const { return std::log(z) - std::log1p(-z); }
  /// sigma(a + h) - sigma(a) = (1 - sigma(a + h)) sigma(a) expm1(h) = sinh(h/2) / (2 cosh(a/2)
  /// cosh((a + h)/2)); since sigma(x) = (1 + tanh(x/2)) / 2 it is half the tanh difference at
  /// (a/2, h/2), whose form neither cancels nor overflows (detail::tanh_difference).
  template <class S> S f_difference(S a, S h) const {
    return detail::tanh_difference(a / 2, h / 2) / 2;
  }

  /// 1 / (1 + e^-a) from Eigen's vectorised exp, to a few ulps everywhere (e^-a = inf gives 0).
  /// Not Eigen's logistic(), whose float version is off by up to 7e-4 relative near a = -9.
  template <class A> auto f_expr(const A& a) const {
    using S = typename A::Scalar;
    return S(1) / (S(1) + (-a).exp());
  }
  /// e / (1 + e)^2 with e = exp(-|a|), f(a) f(-a) without cancellation.
  template <class A> auto df_expr(const A& a) const {
    using S = typename A::Scalar;
    return (-a.abs()).exp() / (S(1) + (-a.abs()).exp()).square();
  }
  template <class A, class H> auto f_difference_expr(const A& a, const H& h) const {
    using S = typename A::Scalar;
    return detail::tanh_difference_expr(S(0.5) * a, S(0.5) * h) * S(0.5);
  }

 private:
  template <class S> static S xlogx(S x) { return x > 0 ? x * std::log(x) : S(0); }
};

}  // namespace bilevel
