#pragma once
/// \file
/// Hard sigmoid: f(a) = clip(a, 0, 1) exactly (not the 0.2a + 0.5 variant);
/// G(a) = 0 (a < 0), a^2/2 (0 <= a <= 1), a - 1/2 (a > 1); G*(z) = z^2/2 on [0, 1] (docs/methods.md §2).
///
/// Papers: Scellier & Bengio 2017 (arXiv:1602.05179; EP's rho); Zach 2021 (arXiv:2105.07231),
/// whose Fenchel coupling (docs/methods.md §3) uses G and G*.

#include <algorithm>
#include <limits>
#include <string>

#include "indicator.hpp"
#include "range.hpp"

namespace bilevel {

/// The hard sigmoid pair: f(a) = clip(a, 0, 1), G*(z) = z^2/2 on [0, 1].
struct hard_sigmoid {
  /// f is clip(a, 0, 1): EP projects its states onto [0, 1] (docs/methods.md §5.3).
  static constexpr activation_range range{0, 1, true};

  std::string name() const { return "hard_sigmoid"; }
  template <class S> S f(S a) const { return std::clamp(a, S(0), S(1)); }
  template <class S> S df(S a) const { return a > 0 && a < 1 ? S(1) : S(0); }
  template <class S> S G(S a) const { return a < 0 ? S(0) : a <= 1 ? a * a / 2 : a - S(0.5); }
  template <class S> S G_conj(S z) const {
    return z >= 0 && z <= 1 ? z * z / 2 : std::numeric_limits<S>::infinity();
  }
  /// At the ends of [0, 1], z itself lies in the normal cone plus z, so it is a valid element.
  template <class S> S grad_conj(S z) const { return z; }
  template <class S> S prox_conj(S v, S t) const { return std::clamp(v / (1 + t), S(0), S(1)); }
  /// f(a + h) - f(a) = clip(a + h) - f(a) = clip((a - f(a)) + h, 0 - f(a), 1 - f(a)): h where
  /// a and a + h lie inside [0, 1], 0 where both are clipped to one bound, and no cancellation
  /// where a is clipped and a + h is not (a - f(a) is exact there, unlike fl(a + h) - bound).
  template <class S> S f_difference(S a, S h) const {
    const S base = f(a);
    return std::clamp((a - base) + h, S(0) - base, S(1) - base);
  }
  /// D_G(a + h, a) = G(a + h) - G(a) - f(a) h, the integral over s in [0, h] of
  /// f(a + s) - f(a) = clip(t(s), lo - f(a), hi - f(a)) with t(s) = (a - f(a)) + s: t^2 / 2
  /// between the bounds, linear beyond; exactly h^2 / 2 inside the middle piece, 0 on a flat one.
  template <class S> S G_divergence(S a, S h) const {
    const S base = f(a), low = S(0) - base, high = S(1) - base, t = (a - base) + h;
    return t <= low ? low * (t - low / 2) : t >= high ? high * (t - high / 2) : t * t / 2;
  }

  template <class A> auto f_expr(const A& a) const {
    using S = typename A::Scalar;
    return a.max(S(0)).min(S(1));
  }
  template <class A> auto df_expr(const A& a) const {
    using S = typename A::Scalar;
    return detail::indicator_between(a, S(0), S(1));
  }
  template <class A, class H> auto f_difference_expr(const A& a, const H& h) const {
    using S = typename A::Scalar;
    return ((a - f_expr(a)) + h).max(S(0) - f_expr(a)).min(S(1) - f_expr(a));
  }
};

}  // namespace bilevel
