// Extending the library without editing it: a pair defined only in this file (capped ReLU, a
// ReLU capped at c) satisfies the concept, passes the numerical checker and trains with Fenchel BP.

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "bilevel/activations/activations.hpp"
#include "bilevel/losses/mse.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/methods/fenchel_bp.hpp"
#include "bilevel/optimizers/adam.hpp"
#include "helpers.hpp"

namespace {

// Capped ReLU: f(a) = clip(a, 0, c) for a cap c > 0 (ReLU6 for c = 6).
//   G(a) = 0 (a < 0), a^2/2 (0 <= a <= c), c a - c^2/2 (a > c)
//   G*(z) = z^2/2 on [0, c], +inf elsewhere
// Only the required members are given: the library finds the inverse map and the prox itself.
struct capped_relu {
  double cap = 6;
  std::string name() const { return "capped_relu"; }
  template <class S> S f(S a) const { return std::clamp(a, S(0), S(cap)); }
  template <class S> S df(S a) const { return a > 0 && a < S(cap) ? S(1) : S(0); }
  template <class S> S G(S a) const {
    return a < 0 ? S(0) : a <= S(cap) ? a * a / 2 : S(cap) * a - S(cap * cap / 2);
  }
  template <class S> S G_conj(S z) const {
    return z >= 0 && z <= S(cap) ? z * z / 2 : std::numeric_limits<S>::infinity();
  }
};

// A smooth user pair with a closed-form prox: the scaled identity f(a) = a / 2,
// G(a) = a^2/4, G*(z) = z^2. prox of t G*: argmin t z^2 + (z - v)^2/2 = v / (1 + 2t).
struct half_identity {
  std::string name() const { return "half_identity"; }
  template <class S> S f(S a) const { return a / 2; }
  template <class S> S df(S) const { return S(0.5); }
  template <class S> S G(S a) const { return a * a / 4; }
  template <class S> S G_conj(S z) const { return z * z; }
  template <class S> S prox_conj(S v, S t) const { return v / (1 + 2 * t); }
};

// Missing G_conj: not an activation pair.
struct incomplete_pair {
  std::string name() const { return "incomplete"; }
  template <class S> S f(S a) const { return a; }
  template <class S> S df(S) const { return S(1); }
  template <class S> S G(S a) const { return a * a / 2; }
};

}  // namespace

using namespace bilevel;
using namespace bilevel::testing;

TEST_CASE("a user-defined pair satisfies the concept; an incomplete one does not",
          "[custom_pair]") {
  STATIC_REQUIRE(ActivationPair<capped_relu, double>);
  STATIC_REQUIRE(ActivationPair<capped_relu, float>);
  STATIC_REQUIRE(ActivationPair<half_identity, double>);
  STATIC_REQUIRE_FALSE(ActivationPair<incomplete_pair, double>);
}

TEST_CASE("a user-defined pair passes the numerical checker with the library's generic inverse "
          "map and prox",
          "[custom_pair]") {
  pair_check_options options;
  options.scale = 8;  // reach both kinks, at 0 and at the cap
  const auto report = check_activation_pair<double>(capped_relu{}, options);
  INFO(report.summary());
  CHECK(report.ok());
  const auto closed_form = check_activation_pair<double>(half_identity{});
  INFO(closed_form.summary());
  CHECK(closed_form.ok());
}

TEST_CASE("the generic prox of a user pair equals the closed form", "[custom_pair]") {
  // capped ReLU's prox is clip(v / (1 + t), 0, cap), which the library does not know.
  Matrix<double> v(1, 5), out(1, 5);
  v << -3.0, 0.5, 4.0, 10.0, 20.0;
  prox_conj<double>(capped_relu{}, v, 0.5, out);
  for (Index j = 0; j < v.cols(); ++j)
    CHECK(out(0, j) == Approx(std::clamp(v(0, j) / 1.5, 0.0, 6.0)).margin(1e-12));
}

TEST_CASE("a user-defined pair trains a small program with Fenchel BP", "[custom_pair]") {
  // Regression of y = sum of squares of the inputs (not linear), 3-16-1 with capped ReLU.
  random_source random(31);
  program<double, mse, capped_relu, identity> net({3, 16, 1}, {capped_relu{}, identity{}});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 256);
  const Matrix<double> y = x.colwise().squaredNorm();
  fenchel_bp<double> method(0.1);
  adam<double> optimizer({.learning_rate = 0.01}, net.parameter_count(), net.weight_count());
  Vector<double> gradient;
  const double initial = method.gradient(net, x, y, gradient).loss;
  double final_loss = initial;
  for (int step = 0; step < 1500; ++step) {
    final_loss = method.gradient(net, x, y, gradient).loss;
    optimizer.step(net.parameters(), gradient);
  }
  INFO("loss " << initial << " -> " << final_loss);
  CHECK(final_loss < 0.1 * initial);
}
