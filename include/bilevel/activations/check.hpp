#pragma once
/// \file
/// Numerical checks of an activation pair against the identities of docs/methods.md §2, for built-in
/// and user-defined pairs alike, in the order they run:
/// ~~~{.unparsed}
///   declared range     f(a) in [lower, upper], and f(a) = clip(a, lower, upper) if it clips
///                      (pairs with a `range` member, activations/range.hpp)
///   Fenchel-Young      G(a) + G*(z) - <z, a> >= 0 for any a, z, and = 0 at z = f(a)
///   gradient           f = dG, by central differences of G
///   VJP                <J_f(a)^T u, v> = <u, d/dh f(a + h v)>, by central differences of f
///                      (from the vectorised df_expr and from the scalar df, where both exist)
///   inverse map        f(grad_conj(z)) = z on the range of f
///   prox               z = prox_{tG*}(v) satisfies z = f((v - z) / t)  (Moreau's identity)
///   prox equation      d = prox_conj_displacement(a, rho, c) is f(a + w) - f(a) at the w with
///                      c w + d = rho, also where a + w saturates f
///   difference         f(a + h) - f(a) from the pair's f_difference (batch and scalar forms)
///                      equals the direct form evaluated in long double, for h from 1e-4 to 10
///                      times the sample range
///   divergence         G(a + h) - G(a) - f(a) h from the pair's G_divergence is >= 0 and
///                      equals the direct form in long double; its batch form, summed per
///                      sample, equals the scalar one's sum
///   prox displacement  the pair's prox_conj_difference(a, rho, c) (scalar and batch forms)
///                      equals the d = f(a + w) - f(a) with c w + d = rho that safeguarded
///                      Newton steps find (activations/displacement.hpp)
/// ~~~
/// Finite differences are skipped where the forward and backward differences disagree (a kink
/// between the sample points), since f and G are only piecewise smooth.

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../core/random.hpp"
#include "../core/types.hpp"
#include "concept.hpp"
#include "displacement.hpp"

namespace bilevel {

/// Sample sizes, range, tolerance, finite-difference step and seed of check_activation_pair.
struct pair_check_options {
  Index dimension = 6;      ///< rows of the sample matrices (softmax: the simplex dimension)
  Index samples = 40;       ///< columns of the sample matrices
  double scale = 3.0;       ///< pre-activations are drawn uniformly from [-scale, scale]
  double tolerance = 1e-6;  ///< relative tolerance of every identity
  double step = 1e-6;       ///< finite-difference step
  /// allowed relative error of f(a + h) - f(a), in units of roundoff of S times 1 + |a| + |h|
  /// (the difference's conditioning); a cancelling direct form misses it by about 1 / |h|
  double difference_ulps = 8;
  std::uint64_t seed = 7;
};

/// The failed identities check_activation_pair found (up to three examples of each); ok() if none.
struct pair_check_report {
  std::vector<std::string> failures;
  bool ok() const { return failures.empty(); }
  std::string summary() const {
    std::ostringstream out;
    for (const auto& line : failures) out << line << '\n';
    return out.str();
  }
};

namespace detail {

template <class S>
Matrix<S> uniform_matrix(random_source& random, Index rows, Index cols, double scale) {
  Matrix<S> m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) m(i, j) = S(random.uniform(-scale, scale));
  return m;
}

template <class S>
bool close(S actual, S expected, double tolerance) {
  return std::abs(actual - expected) <= tolerance * std::max<S>(S(1), std::abs(expected));
}

}  // namespace detail

/// Runs every check on `pair` in scalar type S and lists what failed (empty when all hold).
template <class S, ActivationPair<S> P>
pair_check_report check_activation_pair(const P& pair, const pair_check_options& options = {}) {
  pair_check_report report;
  std::map<std::string, int> failures_per_check;  // a few examples of each failed identity
  auto fail = [&](const std::string& what, Index i, Index j, S actual, S expected) {
    if (++failures_per_check[what] > 3) return;
    std::ostringstream line;
    line << pair.name() << ": " << what << " at (" << i << "," << j << "): got " << actual
         << ", expected " << expected;
    report.failures.push_back(line.str());
  };
  random_source random(options.seed);
  const Index n = options.dimension, m = options.samples;
  const double tol = options.tolerance;
  const S h = S(options.step);

  const Matrix<S> a = detail::uniform_matrix<S>(random, n, m, options.scale);
  Matrix<S> z(n, m);
  activate<S>(pair, a, z);
  const RowVector<S> G_a = potential<S>(pair, a);

  if constexpr (bounded_pair<P>) {
    const S lower = S(P::range.lower), upper = S(P::range.upper);
    for (Index j = 0; j < m; ++j) {
      for (Index i = 0; i < n; ++i) {
        if (!(z(i, j) >= lower && z(i, j) <= upper))
          fail("f(a) outside the declared range", i, j, z(i, j), std::clamp(z(i, j), lower, upper));
        else if (P::range.clips && z(i, j) != std::clamp(a(i, j), lower, upper))
          fail("f(a) != clip(a) of a pair declared to clip", i, j, z(i, j),
               std::clamp(a(i, j), lower, upper));
      }
    }
  }

  // Fenchel-Young: equality on the graph of f, inequality against other points of the range.
  const RowVector<S> conj_z = conjugate<S>(pair, z);
  for (Index j = 0; j < m; ++j) {
    const S gap = G_a(j) + conj_z(j) - z.col(j).dot(a.col(j));
    if (!detail::close(gap, S(0), tol * (1 + std::abs(G_a(j)) + std::abs(conj_z(j)))))
      fail("Fenchel-Young gap at z = f(a) is not 0", 0, j, gap, 0);
  }
  for (Index shift = 1; shift < 4; ++shift) {
    for (Index j = 0; j < m; ++j) {
      const Index k = (j + shift) % m;  // z from another sample: a point of the domain
      const S gap = G_a(j) + conj_z(k) - z.col(k).dot(a.col(j));
      if (gap < -tol * (1 + std::abs(G_a(j)) + std::abs(conj_z(k))))
        fail("Fenchel-Young gap is negative", 0, j, gap, 0);
    }
  }

  // f = dG by central differences, one coordinate at a time.
  for (Index i = 0; i < n; ++i) {
    Matrix<S> plus = a, minus = a;
    plus.row(i).array() += h;
    minus.row(i).array() -= h;
    const RowVector<S> G_plus = potential<S>(pair, plus), G_minus = potential<S>(pair, minus);
    for (Index j = 0; j < m; ++j) {
      const S forward = (G_plus(j) - G_a(j)) / h, backward = (G_a(j) - G_minus(j)) / h;
      if (!detail::close(forward, backward, 100 * tol)) continue;  // a kink in between
      const S central = (G_plus(j) - G_minus(j)) / (2 * h);
      if (!detail::close(z(i, j), central, 100 * tol)) fail("f != dG/da", i, j, z(i, j), central);
    }
  }

  // VJP against directional finite differences of f.
  {
    const Matrix<S> u = detail::uniform_matrix<S>(random, n, m, 1.0);
    const Matrix<S> v = detail::uniform_matrix<S>(random, n, m, 1.0);
    Matrix<S> Ju(n, m), f_plus(n, m), f_minus(n, m);
    vjp<S>(pair, a, u, Ju);
    activate<S>(pair, Matrix<S>(a + h * v), f_plus);
    activate<S>(pair, Matrix<S>(a - h * v), f_minus);
    for (Index j = 0; j < m; ++j) {
      const S forward = u.col(j).dot(f_plus.col(j) - z.col(j)) / h;
      const S backward = u.col(j).dot(z.col(j) - f_minus.col(j)) / h;
      if (!detail::close(forward, backward, 100 * tol)) continue;
      const S central = u.col(j).dot(f_plus.col(j) - f_minus.col(j)) / (2 * h);
      const S product = Ju.col(j).dot(v.col(j));
      if (!detail::close(product, central, 100 * tol))
        fail("<J^T u, v> != finite difference of f", 0, j, product, central);
      // vjp reads df_expr where a pair has one; its scalar df must agree too.
      if constexpr (detail::has_df_expr<P, S>) {
        S scalar = 0;
        for (Index i = 0; i < n; ++i) scalar += S(pair.df(a(i, j))) * u(i, j) * v(i, j);
        if (!detail::close(scalar, central, 100 * tol))
          fail("<J^T u, v> from the scalar df != finite difference of f", 0, j, scalar, central);
      }
    }
  }

  // The inverse map: f(grad_conj(z)) = z on the range of f.
  {
    Matrix<S> preimage(n, m), image(n, m);
    grad_conj<S>(pair, z, preimage);
    activate<S>(pair, preimage, image);
    for (Index j = 0; j < m; ++j)
      for (Index i = 0; i < n; ++i)
        if (!detail::close(image(i, j), z(i, j), 100 * tol))
          fail("f(grad_conj(z)) != z", i, j, image(i, j), z(i, j));
  }

  // Prox optimality z = f((v - z)/t) for several step sizes t.
  for (const S t : {S(0.1), S(1), S(10)}) {
    const Matrix<S> v = detail::uniform_matrix<S>(random, n, m, options.scale);
    Matrix<S> p(n, m), image(n, m);
    prox_conj<S>(pair, v, t, p);
    activate<S>(pair, Matrix<S>((v - p) / t), image);
    for (Index j = 0; j < m; ++j)
      for (Index i = 0; i < n; ++i)
        if (!detail::close(image(i, j), p(i, j), 100 * tol))
          fail("prox of t G* violates z = f((v - z)/t)", i, j, p(i, j), image(i, j));
  }

  // The prox in displacement form solves its equation: d = f(a + w) - f(a) with c w + d = rho,
  // for moves from small to deep into saturation (|rho| up to (c + 1) times the sample range).
  if constexpr (!ColumnwisePair<P, S>) {
    for (const double c : {0.1, 0.25, 1.0, 10.0}) {
      const Matrix<S> rho = detail::uniform_matrix<S>(random, n, m, (c + 1) * options.scale);
      Matrix<S> d(n, m), image(n, m);
      prox_conj_displacement<S>(pair, a, rho, S(c), d);
      difference<S>(pair, a, Matrix<S>((rho - d) / S(c)), image);
      for (Index j = 0; j < m; ++j)
        for (Index i = 0; i < n; ++i)
          if (!detail::close(image(i, j), d(i, j), 100 * tol))
            fail("prox_conj_displacement violates d = f(a + w) - f(a) with c w + d = rho", i, j,
                 d(i, j), image(i, j));
    }
  }

  // f(a + h) - f(a) against the direct form in long double, whose own error, about
  // eps_ld (|f(a)| + |f(a + h)|), is resolved where it is below a quarter of the allowance.
  if constexpr (detail::has_exact_difference<P, S> && ActivationPair<P, long double>) {
    using L = long double;
    const L unit = L(options.difference_ulps) * std::numeric_limits<S>::epsilon();
    const L resolution = 4 * std::numeric_limits<L>::epsilon();
    for (const double size : {1e-4, 1e-2, 1.0, 10.0}) {
      Matrix<S> h(n, m), d(n, m);
      for (Index j = 0; j < m; ++j)
        for (Index i = 0; i < n; ++i) {
          const double magnitude = size * options.scale * random.uniform(0.5, 1.0);
          h(i, j) = S(random.uniform(-1.0, 1.0) < 0 ? -magnitude : magnitude);
        }
      difference<S>(pair, a, h, d);
      const Matrix<L> a_long = a.template cast<L>(), h_long = h.template cast<L>();
      Matrix<L> shifted(n, m), base(n, m);
      activate<L>(pair, Matrix<L>(a_long + h_long), shifted);
      activate<L>(pair, a_long, base);
      const Matrix<L> expected = shifted - base;
      if constexpr (ColumnwisePair<P, S>) {
        for (Index j = 0; j < m; ++j) {
          const L size_of = expected.col(j).cwiseAbs().maxCoeff();
          const L allowed = unit * size_of *
                            (1 + a_long.col(j).cwiseAbs().maxCoeff() +
                             h_long.col(j).cwiseAbs().maxCoeff());
          const L reference_error =
              resolution * (shifted.col(j).cwiseAbs() + base.col(j).cwiseAbs()).maxCoeff();
          if (reference_error > allowed / 4) continue;
          Index i = 0;
          const L error = (d.col(j).template cast<L>() - expected.col(j)).cwiseAbs().maxCoeff(&i);
          if (error > allowed)
            fail("f_difference != f(a + h) - f(a) in long double", i, j, d(i, j), S(expected(i, j)));
        }
      } else {
        for (Index j = 0; j < m; ++j)
          for (Index i = 0; i < n; ++i) {
            const L want = expected(i, j);
            const L allowed = unit * std::abs(want) * (1 + std::abs(a_long(i, j)) + std::abs(h_long(i, j)));
            if (resolution * (std::abs(shifted(i, j)) + std::abs(base(i, j))) > allowed / 4) continue;
            if (std::abs(L(d(i, j)) - want) > allowed)
              fail("difference() != f(a + h) - f(a) in long double", i, j, d(i, j), S(want));
            if constexpr (detail::has_scalar_difference<P, S>) {
              const S scalar = S(pair.f_difference(a(i, j), h(i, j)));
              if (std::abs(L(scalar) - want) > allowed)
                fail("f_difference(a, h) != f(a + h) - f(a) in long double", i, j, scalar, S(want));
            }
          }
      }
    }
  }

  // The Bregman divergence G(a + h) - G(a) - f(a) h from the pair's G_divergence: >= 0, and
  // the direct form in long double where that resolves it.
  if constexpr (detail::has_scalar_divergence<P, S> && ActivationPair<P, long double>) {
    using L = long double;
    const L unit = L(options.difference_ulps) * std::numeric_limits<S>::epsilon();
    const L resolution = 4 * std::numeric_limits<L>::epsilon();
    const Matrix<S> a = detail::uniform_matrix<S>(random, n, m, options.scale);
    for (const double size : {1e-4, 1e-2, 1.0, 10.0}) {
      const Matrix<S> h = detail::uniform_matrix<S>(random, n, m, size * options.scale);
      for (Index j = 0; j < m; ++j)
        for (Index i = 0; i < n; ++i) {
          const S got = S(pair.G_divergence(a(i, j), h(i, j)));
          const L x = a(i, j), step = h(i, j);
          const L potential = L(pair.G(x + step)), base = L(pair.G(x));
          const L want = potential - base - L(pair.f(x)) * step;
          if (!(got >= 0))
            fail("G_divergence(a, h) < 0", i, j, got, S(want));
          const L allowed = unit * (std::abs(want) + std::abs(x * step) * unit);
          if (resolution * (std::abs(potential) + std::abs(base)) > allowed / 4) continue;
          if (std::abs(L(got) - want) > allowed)
            fail("G_divergence(a, h) != G(a + h) - G(a) - f(a) h in long double", i, j, got,
                 S(want));
        }
    }
  }
  if constexpr (detail::has_scalar_divergence<P, S>) {
    const Matrix<S> a = detail::uniform_matrix<S>(random, n, m, options.scale);
    const Matrix<S> h = detail::uniform_matrix<S>(random, n, m, options.scale);
    RowVector<S> batch(m);
    potential_divergence<S>(pair, a, h, batch);
    for (Index j = 0; j < m; ++j) {
      S sum = 0, size = 0;
      for (Index i = 0; i < n; ++i) {
        const S term = S(pair.G_divergence(a(i, j), h(i, j)));
        sum += term;
        size += std::abs(term);
      }
      if (std::abs(batch(j) - sum) >
          S(options.difference_ulps) * n * std::numeric_limits<S>::epsilon() * size)
        fail("potential_divergence != the sum of G_divergence(a, h)", 0, j, batch(j), sum);
    }
  }

  if constexpr (detail::has_scalar_prox_conj_difference<P, S>) {
    const Matrix<S> a = detail::uniform_matrix<S>(random, n, m, options.scale);
    for (const double c : {0.1, 1.0, 10.0}) {
      const Matrix<S> rho = detail::uniform_matrix<S>(random, n, m, c * options.scale);
      Matrix<S> batch(n, m);
      prox_conj_displacement<S>(pair, a, rho, S(c), batch);
      for (Index j = 0; j < m; ++j)
        for (Index i = 0; i < n; ++i) {
          const S newton = detail::solve_displacement<S>(pair, a(i, j), rho(i, j), S(c));
          const S scalar = S(pair.prox_conj_difference(a(i, j), rho(i, j), S(c)));
          const S allowed = S(options.difference_ulps) * std::numeric_limits<S>::epsilon() *
                            (std::abs(rho(i, j)) + S(c) * std::abs(a(i, j)) + std::abs(newton));
          if (std::abs(scalar - newton) > allowed)
            fail("prox_conj_difference(a, rho, c) != the Newton solution", i, j, scalar, newton);
          if (std::abs(batch(i, j) - newton) > allowed)
            fail("prox_conj_displacement != the Newton solution", i, j, batch(i, j), newton);
        }
    }
  }
  return report;
}

}  // namespace bilevel
