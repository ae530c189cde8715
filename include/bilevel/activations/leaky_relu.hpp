#pragma once
/// \file
/// Leaky ReLU with slope s in (0, 1): f(a) = a (a >= 0) or s a; G(a) = a^2/2 or s a^2/2;
/// G*(z) = z^2/2 (z >= 0) or z^2/(2s) (docs/methods.md §2). The slope is part of the pair's state.
///
/// Papers: Maas, Hannun & Ng, ICML 2013 workshop (leaky ReLU); Zach 2021 (arXiv:2105.07231), whose
/// Fenchel coupling (docs/methods.md §3) uses G and G*.

#include <algorithm>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "relu.hpp"

namespace bilevel {

/// The leaky ReLU pair; its slope in (0, 1) is a hyperparameter saved in checkpoints.
struct leaky_relu {
  double slope = 0.01;

  leaky_relu() = default;
  explicit leaky_relu(double s) : slope(s) {
    detail::require(s > 0 && s < 1, "leaky_relu", "slope", "in (0, 1)", s);
  }

  std::string name() const { return "leaky_relu"; }
  /// The slope, saved in checkpoints and restored by set_hyperparameters.
  std::vector<double> hyperparameters() const { return {slope}; }
  void set_hyperparameters(const std::vector<double>& values) {
    detail::require(values.size() == 1, "leaky_relu::set_hyperparameters", "the number of values",
                    "1 (the slope)", values.size());
    *this = leaky_relu(values.front());
  }
  template <class S> S f(S a) const { return a >= 0 ? a : S(slope) * a; }
  template <class S> S df(S a) const { return a > 0 ? S(1) : S(slope); }
  template <class S> S G(S a) const { return (a >= 0 ? S(1) : S(slope)) * a * a / 2; }
  template <class S> S G_conj(S z) const { return (z >= 0 ? S(1) : 1 / S(slope)) * z * z / 2; }
  template <class S> S grad_conj(S z) const { return z >= 0 ? z : z / S(slope); }
  /// f(a + h) - f(a), from f = s x + (1 - s) relu(x): s h + (1 - s) (relu(a + h) - relu(a)),
  /// with relu's exact difference. That is h or s h where a and a + h lie on one piece, and a
  /// sum of two terms of one sign across the kink: no cancellation anywhere.
  template <class S> S f_difference(S a, S h) const {
    return S(slope) * h + (1 - S(slope)) * relu{}.f_difference(a, h);
  }
  /// D_G(a + h, a): G = s a^2 / 2 + (1 - s) G_relu, exact per piece as relu's.
  template <class S> S G_divergence(S a, S h) const {
    return S(slope) * h * h / 2 + (1 - S(slope)) * relu{}.G_divergence(a, h);
  }
  /// The proximal map of c G* about the forward pass, as relu's: d = f(a + w) - f(a) with
  /// c w + d = rho is (rho + c (a - f(a))) / (c + 1) above the kink w = -a and
  /// (s rho + c (s a - f(a))) / (c + s) below it; the first rises faster in rho and the two meet
  /// at the kink, so d is the larger.
  template <class S> S prox_conj_difference(S a, S rho, S c) const {
    const S s = S(slope);
    return std::max((rho + c * (1 - s) * std::min(a, S(0))) / (c + 1),
                    (s * rho + c * (s - 1) * std::max(a, S(0))) / (c + s));
  }
  /// t G*'(z) + z = v on each branch: z = v/(1+t) for v >= 0, z = s v/(s+t) otherwise.
  template <class S> S prox_conj(S v, S t) const {
    return v >= 0 ? v / (1 + t) : S(slope) * v / (S(slope) + t);
  }

  template <class A> auto f_expr(const A& a) const {
    using S = typename A::Scalar;
    return (a >= S(0)).select(a, S(slope) * a);
  }
  template <class A> auto df_expr(const A& a) const {
    using S = typename A::Scalar;
    return (a > S(0)).select(A::Constant(a.rows(), a.cols(), S(1)),
                             A::Constant(a.rows(), a.cols(), S(slope)));
  }
  template <class A, class H> auto f_difference_expr(const A& a, const H& h) const {
    using S = typename A::Scalar;
    return S(slope) * h + (1 - S(slope)) * relu{}.f_difference_expr(a, h);
  }
  template <class A, class H> auto G_divergence_expr(const A& a, const H& h) const {
    using S = typename A::Scalar;
    return S(slope) * h * h / 2 + (1 - S(slope)) * relu{}.G_divergence_expr(a, h);
  }
  template <class A, class R>
  auto prox_conj_difference_expr(const A& a, const R& rho, typename A::Scalar c) const {
    using S = typename A::Scalar;
    const S s = S(slope);
    return ((rho + c * (1 - s) * a.min(S(0))) / (c + 1))
        .max((s * rho + c * (s - 1) * a.max(S(0))) / (c + s));
  }
};

}  // namespace bilevel
