// Activation pairs (docs/methods.md §2): every built-in pair passes the numerical checker in double
// and float, a deliberately wrong pair is rejected, and the closed forms hold at chosen points.

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "bilevel/activations/activations.hpp"

using namespace bilevel;

TEMPLATE_LIST_TEST_CASE("every built-in pair satisfies the identities of docs/methods.md §2 in double",
                        "[activations]", builtin_pairs) {
  STATIC_REQUIRE(ActivationPair<TestType, double>);
  STATIC_REQUIRE(detail::has_exact_difference<TestType, double>);  // so the checker checks it
  const auto report = check_activation_pair<double>(TestType{});
  INFO(report.summary());
  CHECK(report.ok());
}

TEMPLATE_LIST_TEST_CASE("every built-in pair satisfies the identities in float",
                        "[activations]", builtin_pairs) {
  STATIC_REQUIRE(ActivationPair<TestType, float>);
  STATIC_REQUIRE(detail::has_exact_difference<TestType, float>);
  pair_check_options options;
  options.tolerance = 2e-3;
  options.step = 1e-2;
  const auto report = check_activation_pair<float>(TestType{}, options);
  INFO(report.summary());
  CHECK(report.ok());
}

namespace {
// ReLU with a conjugate that is off by a factor of 2: Fenchel-Young fails at z = f(a).
struct wrong_conjugate_relu : relu {
  template <class S> S G_conj(S z) const { return 2 * relu::G_conj(z); }
};
// Sigmoid whose derivative is wrong: the VJP check must catch it.
struct wrong_derivative_sigmoid : sigmoid {
  template <class S> S df(S a) const { return 2 * sigmoid::df(a); }
};
// tanh with G scaled: f is then not the gradient of G.
struct wrong_potential_tanh : tanh_pair {
  template <class S> S G(S a) const { return S(1.5) * tanh_pair::G(a); }
};
// Ranges declared wrongly (activations/range.hpp): sigmoid said to clip, tanh said to lie in
// [0, 1].
struct clipping_sigmoid : sigmoid {
  static constexpr activation_range range{0, 1, true};
};
struct narrow_tanh : tanh_pair {
  static constexpr activation_range range{0, 1, false};
};
// ReLU whose closed-form prox displacement solves c w + d = 2 rho, and whose vectorised
// divergence is twice the scalar one.
struct wrong_prox_difference_relu : relu {
  template <class S> S prox_conj_difference(S a, S rho, S c) const {
    return relu::prox_conj_difference(a, 2 * rho, c);
  }
};
struct wrong_divergence_expr_relu : relu {
  template <class A, class H> auto G_divergence_expr(const A& a, const H& h) const {
    return 2 * relu::G_divergence_expr(a, h);
  }
};
}  // namespace

TEST_CASE("the checker rejects a closed-form prox displacement or a vectorised divergence that "
          "disagrees with its definition",
          "[activations]") {
  const auto prox = check_activation_pair<double>(wrong_prox_difference_relu{});
  REQUIRE_FALSE(prox.ok());
  CHECK_THAT(prox.summary(), Catch::Contains("prox_conj_difference(a, rho, c) != the Newton"));
  const auto divergence = check_activation_pair<double>(wrong_divergence_expr_relu{});
  REQUIRE_FALSE(divergence.ok());
  CHECK_THAT(divergence.summary(), Catch::Contains("potential_divergence != the sum"));
}

TEST_CASE("the checker rejects a declared range that f does not have", "[activations]") {
  const auto clipping = check_activation_pair<double>(clipping_sigmoid{});
  REQUIRE_FALSE(clipping.ok());
  CHECK_THAT(clipping.summary(), Catch::Contains("f(a) != clip(a)"));
  const auto narrow = check_activation_pair<double>(narrow_tanh{});
  REQUIRE_FALSE(narrow.ok());
  CHECK_THAT(narrow.summary(), Catch::Contains("outside the declared range"));
}

TEST_CASE("the checker rejects a conjugate that is off by a factor", "[activations]") {
  const auto report = check_activation_pair<double>(wrong_conjugate_relu{});
  REQUIRE_FALSE(report.ok());
  CHECK_THAT(report.summary(), Catch::Contains("Fenchel-Young"));
}

TEST_CASE("the checker rejects a wrong derivative", "[activations]") {
  const auto report = check_activation_pair<double>(wrong_derivative_sigmoid{});
  REQUIRE_FALSE(report.ok());
  CHECK_THAT(report.summary(), Catch::Contains("J^T"));
}

TEST_CASE("the checker rejects a potential whose gradient is not f", "[activations]") {
  const auto report = check_activation_pair<double>(wrong_potential_tanh{});
  REQUIRE_FALSE(report.ok());
  CHECK_THAT(report.summary(), Catch::Contains("dG/da"));
}

TEST_CASE("conjugates are +inf outside their domains", "[activations]") {
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(relu{}.G_conj(-0.1) == inf);
  CHECK(hard_sigmoid{}.G_conj(1.01) == inf);
  CHECK(hard_tanh{}.G_conj(-1.01) == inf);
  CHECK(sigmoid{}.G_conj(-1e-3) == inf);
  CHECK(tanh_pair{}.G_conj(1.5) == inf);
  Matrix<double> off_simplex(3, 2);
  off_simplex << 0.5, 0.2, 0.5, 0.9, 0.1, -0.1;
  const RowVector<double> values = softmax{}.G_conj<double>(off_simplex);
  CHECK(values(0) == inf);  // sums to 1.1
  CHECK(values(1) == inf);  // a negative entry
}

TEST_CASE("conjugates match their closed forms and 0 log 0 = 0 at the domain's ends",
          "[activations]") {
  CHECK(sigmoid{}.G_conj(0.0) == 0.0);
  CHECK(sigmoid{}.G_conj(1.0) == 0.0);
  CHECK(sigmoid{}.G_conj(0.5) == Approx(std::log(0.5)));
  CHECK(tanh_pair{}.G_conj(1.0) == Approx(std::log(2.0)));
  CHECK(leaky_relu(0.25).G_conj(-1.0) == Approx(2.0));
  CHECK(hard_sigmoid{}.G(3.0) == Approx(2.5));
  CHECK(hard_tanh{}.G(-3.0) == Approx(2.5));
  Matrix<double> uniform = Matrix<double>::Constant(4, 1, 0.25);
  CHECK(softmax{}.G_conj<double>(uniform)(0) == Approx(std::log(0.25)));
}

TEST_CASE("hard sigmoid is exactly clip(a, 0, 1)", "[activations]") {
  const hard_sigmoid pair;
  CHECK(pair.f(-0.5) == 0.0);
  CHECK(pair.f(0.3) == 0.3);
  CHECK(pair.f(1.7) == 1.0);
  CHECK(pair.df(0.0) == 0.0);  // kinks take derivative 0
  CHECK(pair.df(1.0) == 0.0);
}

TEST_CASE("the softmax VJP equals the full Jacobian transpose product", "[activations]") {
  Matrix<double> a(3, 1), v(3, 1), out(3, 1), z(3, 1);
  a << 0.3, -1.2, 2.0;
  v << 1.0, -0.5, 0.25;
  vjp<double>(softmax{}, a, v, out);
  activate<double>(softmax{}, a, z);
  Matrix<double> jacobian = -z * z.transpose();
  jacobian.diagonal() += z;
  const Matrix<double> expected = jacobian.transpose() * v;
  CHECK((out - expected).norm() < 1e-14);
}

TEST_CASE("leaky ReLU rejects a slope outside (0, 1)", "[activations]") {
  CHECK_THROWS_AS(leaky_relu(0.0), config_error);
  CHECK_THROWS_WITH(leaky_relu(1.5), Catch::Contains("leaky_relu") && Catch::Contains("1.5"));
}

namespace {
// The relative error of `actual` against a long double reference, in units of roundoff of S.
template <class S>
double ulps(S actual, long double expected) {
  if (actual == expected) return 0;
  return double(std::abs(actual - expected) / std::abs(expected)) /
         double(std::numeric_limits<S>::epsilon());
}

// Independent closed forms in long double: (1 - sigma(a + h)) sigma(a) expm1(h) and
// sinh h / (cosh a cosh(a + h)).
long double sigmoid_difference(long double a, long double h) {
  return std::expm1(h) / ((1 + std::exp(a + h)) * (1 + std::exp(-a)));
}
long double tanh_difference(long double a, long double h) {
  return std::sinh(h) / (std::cosh(a) * std::cosh(a + h));
}

// sigmoid with the direct, cancelling difference passed off as exact.
struct cancelling_sigmoid : sigmoid {
  template <class S> S f_difference(S a, S h) const { return f(a + h) - f(a); }
  template <class A, class H> auto f_difference_expr(const A& a, const H& h) const {
    return f_expr(a + h) - f_expr(a);
  }
};
// tanh whose difference drops the factor 2 of its closed form.
struct half_difference_tanh : tanh_pair {
  template <class S> S f_difference(S a, S h) const { return tanh_pair::f_difference(a, h) / 2; }
  template <class A, class H> auto f_difference_expr(const A& a, const H& h) const {
    return tanh_pair::f_difference_expr(a, h) / typename A::Scalar(2);
  }
};
}  // namespace

TEMPLATE_TEST_CASE("sigmoid and tanh, their derivatives and their vectorised forms are accurate "
                   "to a few ulps wherever the values are normal",
                   "[activations]", float, double) {
  using S = TestType;
  // |a| up to 40: sigmoid's tail down to 4e-18, sech^2 down to 7e-35, where 1 - f and
  // 1 - tanh^2 would have cancelled to nothing.
  const Index count = 4001;
  const Matrix<S> a = Vector<S>::LinSpaced(count, S(-40), S(40)).transpose();
  const Matrix<S> ones = Matrix<S>::Ones(1, count);
  Matrix<S> f_sigmoid(1, count), df_sigmoid(1, count), f_tanh(1, count), df_tanh(1, count);
  activate<S>(sigmoid{}, a, f_sigmoid);
  vjp<S>(sigmoid{}, a, ones, df_sigmoid);
  activate<S>(tanh_pair{}, a, f_tanh);
  vjp<S>(tanh_pair{}, a, ones, df_tanh);
  double worst = 0;
  for (Index j = 0; j < count; ++j) {
    const S x = a(0, j);
    const long double wide = x;
    const long double sigma = 1 / (1 + std::exp(-wide)), slope = sigma / (1 + std::exp(wide));
    const long double sech = 1 / std::cosh(wide);
    for (const double error :
         {ulps<S>(f_sigmoid(0, j), sigma), ulps<S>(df_sigmoid(0, j), slope),
          ulps<S>(sigmoid{}.df(x), slope), ulps<S>(df_tanh(0, j), sech * sech),
          ulps<S>(tanh_pair{}.df(x), sech * sech)})
      worst = std::max(worst, error);
    if (x != 0) worst = std::max(worst, ulps<S>(f_tanh(0, j), std::tanh(wide)));
  }
  CHECK(worst <= 8);
}

TEMPLATE_TEST_CASE("smooth differences keep their digits where the direct form cancels, and "
                   "neither overflow nor lose them at large |a| or |h|",
                   "[activations][difference]", float, double) {
  using S = TestType;
  // (a, h): tiny steps, saturated a (differences down to 1e-34), huge steps, steps across 0.
  const S points[][2] = {{S(0.3), S(1e-7)}, {-2, S(-3e-6)}, {9, S(1e-4)},   {-25, S(0.5)},
                         {40, -1},          {-38, 2},       {3, -200},      {-150, 300},
                         {-500, 1000},      {S(0.5), S(-1.25)}};
  for (const auto& point : points) {
    const S a = point[0], h = point[1];
    INFO("a = " << a << ", h = " << h);
    // The difference's conditioning is about 1 + |a| + |h| units of roundoff.
    const double allowed = 4 * (1 + std::abs(double(a)) + std::abs(double(h)));
    CHECK(ulps<S>(sigmoid{}.f_difference(a, h), sigmoid_difference(a, h)) <= allowed);
    CHECK(ulps<S>(tanh_pair{}.f_difference(a, h), tanh_difference(a, h)) <= allowed);
    // The batch forms (vectorised) too.
    const Matrix<S> a_batch = Matrix<S>::Constant(1, 1, a), h_batch = Matrix<S>::Constant(1, 1, h);
    Matrix<S> out(1, 1);
    difference<S>(sigmoid{}, a_batch, h_batch, out);
    CHECK(ulps<S>(out(0, 0), sigmoid_difference(a, h)) <= allowed);
    difference<S>(tanh_pair{}, a_batch, h_batch, out);
    CHECK(ulps<S>(out(0, 0), tanh_difference(a, h)) <= allowed);
  }
  // The direct form in S is off by about u / |h| where it cancels (here ~1e7 ulps).
  const S a = S(0.3), h = S(1e-7);
  CHECK(ulps<S>(sigmoid{}.f(a + h) - sigmoid{}.f(a), sigmoid_difference(a, h)) > 1000);
}

TEMPLATE_TEST_CASE("piecewise-linear differences are slope * h on one piece and cancel nowhere",
                   "[activations][difference]", float, double) {
  using S = TestType;
  const S h = S(1e-7) / 3;           // a + h rounds for the a below
  const S step = S(-0.25) - h;       // 1.25 + step is inside (0, 1)
  CHECK(relu{}.f_difference(S(0.7), h) == h);
  CHECK(relu{}.f_difference(S(-0.7), h) == 0);
  CHECK(relu{}.f_difference(S(1e-9), S(-3e-9)) == S(-1e-9));
  const leaky_relu leaky(0.25);
  CHECK(ulps<S>(leaky.f_difference(S(0.7), h), h) <= 1);  // s h + (1 - s) h
  CHECK(leaky.f_difference(S(-0.7), h) == S(0.25) * h);
  CHECK(leaky.f_difference(S(-1), S(3)) == S(2.25));  // across the kink: 2 - (-0.25)
  CHECK(hard_sigmoid{}.f_difference(S(0.4), -h) == -h);
  CHECK(hard_sigmoid{}.f_difference(S(1.5), -h) == 0);
  // Clipped a, a + h inside: (a - 1) + h, exact here, where fl(a + h) - 1 would round.
  CHECK(hard_sigmoid{}.f_difference(S(1.25), step) == S(0.25) + step);
  CHECK(hard_tanh{}.f_difference(S(-1.25), -step) == S(-0.25) - step);
  CHECK(hard_tanh{}.f_difference(S(-0.4), h) == h);
  CHECK(hard_tanh{}.f_difference(S(-3), S(7)) == 2);
  CHECK(identity{}.f_difference(S(1e8), h) == h);
  // The batch forms (vectorised) give the same values.
  Matrix<S> a(1, 4), steps(1, 4), out(1, 4);
  a << S(0.7), S(-0.7), S(1.25), S(-1);
  steps << h, h, step, S(3);
  difference<S>(relu{}, a, steps, out);
  CHECK(out(0, 0) == h);
  CHECK(out(0, 1) == 0);
  difference<S>(leaky, a, steps, out);
  CHECK(ulps<S>(out(0, 0), h) <= 1);
  CHECK(out(0, 1) == S(0.25) * h);
  CHECK(out(0, 3) == S(2.25));
  difference<S>(hard_sigmoid{}, a, steps, out);
  CHECK(out(0, 2) == S(0.25) + step);
  CHECK(out(0, 0) == h);
  difference<S>(hard_tanh{}, a, steps, out);
  CHECK(out(0, 1) == h);
  CHECK(out(0, 3) == 2);
}

TEMPLATE_TEST_CASE("ReLU's Bregman divergence is exact on both pieces and keeps a NaN of a or h",
                   "[activations][divergence]", float, double) {
  using S = TestType;
  const S nan = std::numeric_limits<S>::quiet_NaN();
  const relu pair;
  CHECK(pair.G_divergence(S(0.75), S(0.5)) == S(0.125));    // both positive: h^2 / 2
  CHECK(pair.G_divergence(S(0.75), S(-1.75)) == S(1.03125));  // -a^2 / 2 - a h, to 0
  CHECK(pair.G_divergence(S(-0.5), S(1.5)) == S(0.5));       // from 0 up: (a + h)^2 / 2
  CHECK(pair.G_divergence(S(-0.5), S(0.25)) == 0);           // both not positive
  CHECK(std::isnan(pair.G_divergence(nan, S(0.5))));
  CHECK(std::isnan(pair.G_divergence(S(0.5), nan)));
  // The vectorised sum per column: nine rows, so that whole packets and a tail are summed; a
  // NaN in a (column 1, first row) or in h (column 2, last row) makes its column's sum NaN.
  Matrix<S> a = Matrix<S>::Constant(9, 3, S(0.75)), h = Matrix<S>::Constant(9, 3, S(-1.75));
  a(0, 1) = nan;
  h(8, 2) = nan;
  RowVector<S> sums(3);
  potential_divergence<S>(pair, a, h, sums);
  CHECK(sums(0) == 9 * S(1.03125));
  CHECK(std::isnan(sums(1)));
  CHECK(std::isnan(sums(2)));
}

TEMPLATE_TEST_CASE("the softmax difference equals a long double reference for small and huge "
                   "steps",
                   "[activations][difference]", float, double) {
  using S = TestType;
  // Columns: tiny steps; a constant shift (difference 0); a huge step on a likely entry; a huge
  // step on an entry with p ~ 1e-18, whose share stays small; huge steps of both signs.
  Matrix<S> a(3, 5), h(3, 5), out(3, 5);
  a << S(0.3), 1, 0, 0, 2,  //
      S(-1.2), 1, -2, -40, -1,  //
      2, 1, 1, 0, S(0.5);
  h << S(1e-6), 5, 0, 0, -150,  //
      S(-2e-6), 5, 60, 30, 80,  //
      S(3e-7), 5, 0, 0, 10;
  difference<S>(softmax{}, a, h, out);
  const Matrix<long double> a_long = a.template cast<long double>();
  Matrix<long double> shifted(3, 5), base(3, 5);
  activate<long double>(softmax{}, Matrix<long double>(a_long + h.template cast<long double>()),
                        shifted);
  activate<long double>(softmax{}, a_long, base);
  const Matrix<long double> expected = shifted - base;
  const long double unit = std::numeric_limits<S>::epsilon();
  CHECK(out.col(1).cwiseAbs().maxCoeff() <= 16 * unit);  // a constant shift changes nothing
  for (const Index j : {0, 2, 3, 4}) {
    INFO("column " << j);
    const long double error =
        (out.col(j).template cast<long double>() - expected.col(j)).cwiseAbs().maxCoeff();
    const long double size = expected.col(j).cwiseAbs().maxCoeff();
    const long double allowed = 8 * unit * size *
                                (1 + a_long.col(j).cwiseAbs().maxCoeff() +
                                 (h.col(j).cwiseAbs().maxCoeff()));
    // The reference's own error, ~eps_ld max p, must be resolved (not for column 0 in double).
    if (4 * std::numeric_limits<long double>::epsilon() > allowed / 4) continue;
    CHECK(error <= allowed);
  }
  // In float, the tiny steps of column 0 (~1e-6) keep their digits: the direct form in float
  // would lose about u / 1e-6 of them.
  if constexpr (std::is_same_v<S, float>) {
    Matrix<S> shifted_low(3, 1), base_low(3, 1);
    activate<S>(softmax{}, Matrix<S>(a.col(0) + h.col(0)), shifted_low);
    activate<S>(softmax{}, a.col(0), base_low);
    const long double direct_error =
        ((shifted_low - base_low).template cast<long double>() - expected.col(0)).cwiseAbs().maxCoeff();
    CHECK(direct_error > 100 * 8 * unit * 3 * expected.col(0).cwiseAbs().maxCoeff());
  }
}

TEST_CASE("the checker rejects a difference that cancels or drops a factor",
          "[activations][difference]") {
  const auto cancelling = check_activation_pair<float>(cancelling_sigmoid{});
  REQUIRE_FALSE(cancelling.ok());
  CHECK_THAT(cancelling.summary(), Catch::Contains("f(a + h) - f(a)"));
  const auto halved = check_activation_pair<double>(half_difference_tanh{});
  REQUIRE_FALSE(halved.ok());
  CHECK_THAT(halved.summary(), Catch::Contains("f_difference(a, h)") &&
                                   Catch::Contains("difference()"));
}
