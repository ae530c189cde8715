#pragma once
/// \file
/// tanh: f(a) = tanh a, G(a) = log cosh a,
/// G*(z) = ((1 + z) log(1 + z) + (1 - z) log(1 - z)) / 2 on [-1, 1] (METHODS.md §2).
/// The prox of G* has no closed form; the library solves t a + f(a) = v for it.
///
/// Paper: Zach 2021 (arXiv:2105.07231), whose Fenchel coupling (METHODS.md §3) uses G and G*.

#include <cmath>
#include <limits>
#include <numbers>
#include <string>

#include "range.hpp"

namespace bilevel {

/// The tanh pair, saved under the name "tanh": G(a) = log cosh a, G* finite on [-1, 1].
struct tanh_pair {
  /// Values in (-1, 1), reached only as a -> -inf / +inf (docs/methods.md §5.3).
  static constexpr activation_range range{-1, 1, false};

  std::string name() const { return "tanh"; }
  template <class S> S f(S a) const { return std::tanh(a); }
  template <class S> S df(S a) const {
    const S t = std::tanh(a);
    return 1 - t * t;
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

  template <class A> auto f_expr(const A& a) const { return a.tanh(); }

 private:
  template <class S> static S xlogx(S x) { return x > 0 ? x * std::log(x) : S(0); }
};

}  // namespace bilevel
