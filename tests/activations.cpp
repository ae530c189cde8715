// Activation pairs (METHODS.md §2): every built-in pair passes the numerical checker in double
// and float, a deliberately wrong pair is rejected, and the closed forms hold at chosen points.

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

#include "bilevel/activations/activations.hpp"

using namespace bilevel;

TEMPLATE_TEST_CASE("every built-in pair satisfies the identities of METHODS.md §2 in double",
                   "[activations]", identity, relu, leaky_relu, hard_sigmoid, hard_tanh, sigmoid,
                   tanh_pair, softmax) {
  STATIC_REQUIRE(ActivationPair<TestType, double>);
  const auto report = check_activation_pair<double>(TestType{});
  INFO(report.summary());
  CHECK(report.ok());
}

TEMPLATE_TEST_CASE("every built-in pair satisfies the identities in float", "[activations]",
                   identity, relu, leaky_relu, hard_sigmoid, hard_tanh, sigmoid, tanh_pair,
                   softmax) {
  STATIC_REQUIRE(ActivationPair<TestType, float>);
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
}  // namespace

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
