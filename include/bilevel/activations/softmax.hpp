#pragma once
/// \file
/// Softmax per column: f(a) = softmax(a), G(a) = log sum exp(a), G*(z) = sum z log z on the
/// probability simplex, +inf off it (docs/methods.md §2). Not elementwise: its VJP is the full
/// J^T v = z .* (v - <z, v>), and its prox needs a scalar multiplier per column.
///
/// Paper: Zach 2021 (arXiv:2105.07231), whose Fenchel coupling (docs/methods.md §3) uses G and G*;
/// through G* a softmax output layer also fits the lifted objective of LPOM and FLN (§5.5).

#include <cmath>
#include <limits>
#include <string>

#include "../core/types.hpp"

namespace bilevel {
namespace detail {

/// e^x - 1 over Eigen arrays as tanh(x / 2) (e^x + 1), which has no cancellation and
/// vectorises: Eigen 3.4's expm1 goes through a logarithm and costs about 8 exps.
template <class X>
auto expm1_expr(const X& x) {
  using S = typename X::Scalar;
  return (S(0.5) * x).tanh() * (x.exp() + S(1));
}

}  // namespace detail

/// The softmax pair (columnwise): G = log sum exp, G* = sum z log z on the probability simplex.
struct softmax {
  std::string name() const { return "softmax"; }
  /// ||diag(z) - z z^T||_2 <= max_i 2 z_i (1 - z_i) <= 1/2 (Gershgorin).
  static constexpr double max_slope = 0.5;

  template <class S>
  void f(const MatrixCRef<S>& a, MatrixRef<S> z) const {
    for (Index j = 0; j < a.cols(); ++j) {
      const S top = a.col(j).maxCoeff();
      z.col(j) = (a.col(j).array() - top).exp().matrix();
      z.col(j) /= z.col(j).sum();
    }
  }

  template <class S>
  void vjp(const MatrixCRef<S>& a, const MatrixCRef<S>& v, MatrixRef<S> out) const {
    f<S>(a, out);
    for (Index j = 0; j < a.cols(); ++j) {
      const S inner = out.col(j).dot(v.col(j));
      out.col(j).array() *= v.col(j).array() - inner;
    }
  }

  template <class S>
  RowVector<S> G(const MatrixCRef<S>& a) const {
    RowVector<S> value(a.cols());
    for (Index j = 0; j < a.cols(); ++j) {
      const S top = a.col(j).maxCoeff();
      value(j) = top + std::log((a.col(j).array() - top).exp().sum());
    }
    return value;
  }

  /// out = softmax(a + h) - softmax(a) per column without cancellation. With p = softmax(a),
  /// softmax(a + h)_i = p_i e^(h_i - c) where c = log sum_j p_j e^(h_j) = log1p(sum_j p_j
  /// expm1(h_j)) (the p_j sum to 1), so
  /// ~~~{.unparsed}
  ///   softmax(a + h) - softmax(a) = p .* expm1(h - c).
  /// ~~~
  /// h is first shifted by its p-weighted mean (softmax ignores a constant shift): then c >= 0
  /// (Jensen), and every expm1 argument stays below `large` unless some h_i exceeds the mean
  /// by more; those rare columns take the terms p_i e^(h_i) = e^(log p_i + h_i), which then
  /// dwarf p_i, in the log domain.
  template <class S>
  void f_difference(const MatrixCRef<S>& a, const MatrixCRef<S>& h, MatrixRef<S> out) const {
    const S large = 20;
    for (Index j = 0; j < a.cols(); ++j) {
      auto p = out.col(j).array();
      const S top = a.col(j).maxCoeff();
      p = (a.col(j).array() - top).exp();
      const S total = p.sum();
      p /= total;
      const S mean = (p * h.col(j).array()).sum();
      const auto shifted = h.col(j).array() - mean;
      if (shifted.maxCoeff() <= large) {
        const S c = std::log1p((p * detail::expm1_expr(shifted)).sum());
        p *= detail::expm1_expr(shifted - c);
        continue;
      }
      const S log_total = top + std::log(total);
      // log p_i + shifted_i - t, and p_i e^(shifted_i - t) - p_i in whichever form keeps digits.
      const auto log_term = [&](Index i, S t) { return a(i, j) - log_total + shifted(i) - t; };
      const auto change = [&](Index i, S t) {
        const S e = shifted(i) - t;
        return e <= large ? p(i) * std::expm1(e) : std::exp(log_term(i, t)) - p(i);
      };
      S highest = log_term(0, 0);
      for (Index i = 1; i < a.rows(); ++i) highest = std::max(highest, log_term(i, 0));
      S c = 0;
      if (highest <= large) {  // every p_i e^(shifted_i) <= e^large: log1p of the changes
        for (Index i = 0; i < a.rows(); ++i) c += change(i, 0);
        c = std::log1p(c);
      } else {  // c >= highest > large: log-sum-exp loses nothing here
        for (Index i = 0; i < a.rows(); ++i) c += std::exp(log_term(i, highest));
        c = highest + std::log(c);
      }
      for (Index i = 0; i < a.rows(); ++i) p(i) = change(i, c);
    }
  }

  /// sum z log z where z is on the simplex (entries >= 0, sum within a relative tolerance of 1).
  template <class S>
  RowVector<S> G_conj(const MatrixCRef<S>& z) const {
    RowVector<S> value(z.cols());
    const S tolerance = simplex_tolerance<S>(z.rows());
    for (Index j = 0; j < z.cols(); ++j) {
      if ((z.col(j).array() < 0).any() || std::abs(z.col(j).sum() - 1) > tolerance) {
        value(j) = std::numeric_limits<S>::infinity();
        continue;
      }
      value(j) = z.col(j).unaryExpr([](S x) { return x > 0 ? x * std::log(x) : S(0); }).sum();
    }
    return value;
  }

  /// log z, an element of dG*(z) (unique up to adding a constant to every entry).
  template <class S>
  void grad_conj(const MatrixCRef<S>& z, MatrixRef<S> out) const {
    out = z.array().log().matrix();
  }

  /// prox of t G* at v: KKT gives t log z_i + z_i = v_i - t - lambda, one monotone equation per
  /// entry, with the multiplier lambda found by bisection so that the entries sum to 1.
  template <class S>
  void prox_conj(const MatrixCRef<S>& v, S t, MatrixRef<S> out) const {
    for (Index j = 0; j < v.cols(); ++j) {
      auto total = [&](S lambda) {
        S sum = 0;
        for (Index i = 0; i < v.rows(); ++i) sum += entry(v(i, j) - t - lambda, t);
        return sum;
      };
      // sum_i z_i(lambda) decreases in lambda; bracket the root of sum = 1.
      S low = -1, high = 1;
      while (total(low) < 1) low = 2 * low - 1;
      while (total(high) > 1) high = 2 * high + 1;
      for (int iteration = 0; iteration < 200; ++iteration) {
        const S mid = low + (high - low) / 2;
        if (mid <= low || mid >= high) break;
        (total(mid) > 1 ? low : high) = mid;
      }
      const S lambda = low + (high - low) / 2;
      for (Index i = 0; i < v.rows(); ++i) out(i, j) = entry(v(i, j) - t - lambda, t);
    }
  }

  template <class S>
  static S simplex_tolerance(Index n) {
    return std::max(S(1e-9), S(16) * S(n) * std::numeric_limits<S>::epsilon());
  }

 private:
  /// The z > 0 with t log z + z = c: Newton on u = log z for t u + e^u = c (convex, increasing).
  template <class S>
  static S entry(S c, S t) {
    S u = std::min(c / t, std::log(std::max(c, std::numeric_limits<S>::min())));
    if (!std::isfinite(u)) u = c / t;
    for (int iteration = 0; iteration < 100; ++iteration) {
      const S e = std::exp(u);
      const S step = (t * u + e - c) / (t + e);
      u -= step;
      if (std::abs(step) <= 4 * std::numeric_limits<S>::epsilon() * (1 + std::abs(u))) break;
    }
    return std::exp(u);
  }
};

}  // namespace bilevel
