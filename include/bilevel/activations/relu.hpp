#pragma once
/// \file
/// ReLU: f(a) = max(a, 0), G(a) = [a]_+^2 / 2, G*(z) = z^2/2 for z >= 0, +inf otherwise
/// (docs/methods.md §2). f'(0) is taken as 0 (BP's convention); Fenchel BP instead gets the
/// one-sided derivative at the kink (§4).
///
/// Papers: Nair & Hinton, ICML 2010 (ReLU); Zach 2021 (arXiv:2105.07231), whose Fenchel coupling
/// (docs/methods.md §3) uses G and G*.

#include <algorithm>
#include <limits>
#include <string>

#include "indicator.hpp"

namespace bilevel {

/// The ReLU pair: f(a) = max(a, 0), G(a) = [a]_+^2 / 2, G*(z) = z^2/2 on z >= 0.
struct relu {
  std::string name() const { return "relu"; }
  template <class S> S f(S a) const { return std::max(a, S(0)); }
  template <class S> S df(S a) const { return a > 0 ? S(1) : S(0); }
  template <class S> S G(S a) const { return a > 0 ? a * a / 2 : S(0); }
  template <class S> S G_conj(S z) const {
    return z >= 0 ? z * z / 2 : std::numeric_limits<S>::infinity();
  }
  /// dG*(0) = (-inf, 0]; 0 is the element returned there.
  template <class S> S grad_conj(S z) const { return z; }
  template <class S> S prox_conj(S v, S t) const { return std::max(v / (1 + t), S(0)); }

  /// f(a + h) - f(a) = max(a + h, 0) - max(a, 0) = max(min(a, 0) + h, -max(a, 0)): h where a and
  /// a + h are both positive (slope 1), 0 where both are not, and -a or a + h across the kink,
  /// with no cancellation anywhere.
  template <class S> S f_difference(S a, S h) const {
    return std::max(std::min(a, S(0)) + h, -f(a));
  }
  /// D_G(a + h, a) = G(a + h) - G(a) - f(a) h, the integral over s in [0, h] of
  /// f(a + s) - f(a) = max(t(s), -f(a)) with t(s) = min(a, 0) + s: t^2 / 2 at t(h) while t stays
  /// above -f(a), linear below; exactly h^2 / 2 on the positive piece and 0 on the other. Both
  /// pieces are m (t - m / 2) with m = max(-f(a), t): a max instead of a branch, which Eigen 3.4
  /// vectorises (its select it does not). A NaN in a or h reaches t, and so the result.
  template <class S> S G_divergence(S a, S h) const {
    const S t = std::min(a, S(0)) + h, m = std::max(-f(a), t);
    return m * (t - m / 2);
  }

  /// The proximal map of c G* about the forward pass (activations/displacement.hpp): the
  /// d = f(a + w) - f(a) with c w + d = rho. The left side rises with slope c + 1 above the kink
  /// w = -a and c below it, so d is the larger of the two pieces' solutions,
  /// (rho + c min(a, 0)) / (c + 1) and -f(a): no Newton steps.
  template <class S> S prox_conj_difference(S a, S rho, S c) const {
    return std::max((rho + c * std::min(a, S(0))) / (c + 1), -f(a));
  }

  template <class A> auto f_expr(const A& a) const { return a.max(typename A::Scalar(0)); }
  template <class A> auto df_expr(const A& a) const {
    return detail::indicator_above(a, typename A::Scalar(0));
  }
  template <class A, class H> auto f_difference_expr(const A& a, const H& h) const {
    using S = typename A::Scalar;
    return (a.min(S(0)) + h).max(-a.max(S(0)));
  }
  template <class A, class H> auto G_divergence_expr(const A& a, const H& h) const {
    using S = typename A::Scalar;
    const auto t = a.min(S(0)) + h;
    const auto m = (-a.max(S(0))).max(t);  // G_divergence's m
    return m * (t - S(0.5) * m);
  }
  template <class A, class R>
  auto prox_conj_difference_expr(const A& a, const R& rho, typename A::Scalar c) const {
    using S = typename A::Scalar;
    return ((rho + c * a.min(S(0))) / (c + 1)).max(-a.max(S(0)));
  }
};

}  // namespace bilevel
