#pragma once
/// \file
/// Hard tanh: f(a) = clip(a, -1, 1); G(a) = -a - 1/2 (a < -1), a^2/2 (|a| <= 1), a - 1/2 (a > 1);
/// G*(z) = z^2/2 on [-1, 1] (docs/methods.md §2).
///
/// Paper: Zach 2021 (arXiv:2105.07231), whose Fenchel coupling (docs/methods.md §3) uses G and G*.

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "indicator.hpp"
#include "range.hpp"

namespace bilevel {

/// The hard tanh pair: f(a) = clip(a, -1, 1), G*(z) = z^2/2 on [-1, 1].
struct hard_tanh {
  /// f is clip(a, -1, 1): EP projects its states onto [-1, 1] (docs/methods.md §5.3).
  static constexpr activation_range range{-1, 1, true};

  std::string name() const { return "hard_tanh"; }
  template <class S> S f(S a) const { return std::clamp(a, S(-1), S(1)); }
  template <class S> S df(S a) const { return a > -1 && a < 1 ? S(1) : S(0); }
  template <class S> S G(S a) const { return std::abs(a) <= 1 ? a * a / 2 : std::abs(a) - S(0.5); }
  template <class S> S G_conj(S z) const {
    return std::abs(z) <= 1 ? z * z / 2 : std::numeric_limits<S>::infinity();
  }
  template <class S> S grad_conj(S z) const { return z; }
  template <class S> S prox_conj(S v, S t) const { return std::clamp(v / (1 + t), S(-1), S(1)); }
  /// f(a + h) - f(a) = clip(a + h) - f(a) = clip((a - f(a)) + h, -1 - f(a), 1 - f(a)): h where
  /// a and a + h lie inside [-1, 1], 0 where both are clipped to one bound, and no cancellation
  /// where a is clipped and a + h is not (a - f(a) is exact there, unlike fl(a + h) - bound).
  template <class S> S f_difference(S a, S h) const {
    const S base = f(a);
    return std::clamp((a - base) + h, S(-1) - base, S(1) - base);
  }
  /// D_G(a + h, a) = G(a + h) - G(a) - f(a) h, the integral over s in [0, h] of
  /// f(a + s) - f(a) = clip(t(s), lo - f(a), hi - f(a)) with t(s) = (a - f(a)) + s: t^2 / 2
  /// between the bounds, linear beyond; exactly h^2 / 2 inside the middle piece, 0 on a flat one.
  template <class S> S G_divergence(S a, S h) const {
    const S base = f(a), low = S(-1) - base, high = S(1) - base, t = (a - base) + h;
    return t <= low ? low * (t - low / 2) : t >= high ? high * (t - high / 2) : t * t / 2;
  }

  template <class A> auto f_expr(const A& a) const {
    using S = typename A::Scalar;
    return a.max(S(-1)).min(S(1));
  }
  template <class A> auto df_expr(const A& a) const {
    using S = typename A::Scalar;
    return detail::indicator_between(a, S(-1), S(1));
  }
  template <class A, class H> auto f_difference_expr(const A& a, const H& h) const {
    using S = typename A::Scalar;
    return ((a - f_expr(a)) + h).max(S(-1) - f_expr(a)).min(S(1) - f_expr(a));
  }
};

}  // namespace bilevel
