#pragma once
/// \file
/// Identity: f(a) = a, G(a) = a^2/2, G*(z) = z^2/2 on R (docs/methods.md §2).
///
/// Paper: Zach 2021 (arXiv:2105.07231), whose Fenchel coupling (docs/methods.md §3) uses G and G*.

#include <string>

namespace bilevel {

/// The identity pair: f(a) = a, G(a) = a^2/2, G*(z) = z^2/2.
struct identity {
  /// f(a - beta g) = f(a) - beta g exactly: Fenchel BP's signal is g for every beta (§5.2).
  static constexpr bool linear = true;

  std::string name() const { return "identity"; }
  template <class S> S f(S a) const { return a; }
  template <class S> S df(S) const { return S(1); }
  template <class S> S G(S a) const { return a * a / 2; }
  template <class S> S G_conj(S z) const { return z * z / 2; }
  template <class S> S grad_conj(S z) const { return z; }
  template <class S> S prox_conj(S v, S t) const { return v / (1 + t); }
  template <class S> S f_difference(S, S h) const { return h; }

  template <class A> auto f_expr(const A& a) const { return a; }
  template <class A> auto df_expr(const A& a) const { return A::Constant(a.rows(), a.cols(), 1); }
};

}  // namespace bilevel
