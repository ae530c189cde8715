// Fenchel BP (docs/methods.md §5.2): the beta -> 0 limit per class of activation pair (Corollary 2),
// one-sided derivatives at a ReLU kink (§4), Remark 2's weight gradient, per-layer betas.

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

#include "bilevel/activations/activations.hpp"
#include "bilevel/couplings/fenchel.hpp"
#include "bilevel/losses/mse.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/methods/fenchel_bp.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

template <class Pair>
struct fixture {
  random_source random{21};
  mlp<double, Pair> net = make_mlp<double, Pair>({5, 8, 6, 4});
  Matrix<double> x, y;
  Vector<double> bp_gradient;
  fixture() {
    randomize(net, random);
    x = random_matrix<double>(random, 5, 10);
    y = random_one_hot<double>(random, 4, 10);
    bp<double>{}.gradient(net, x, y, bp_gradient);
  }
  double error_at(double beta) {
    Vector<double> gradient;
    fenchel_bp<double>(beta).gradient(net, x, y, gradient);
    return relative_error(gradient, bp_gradient);
  }
};

/// Largest beta below which no perturbed pre-activation a - beta g of a hidden layer crosses a
/// kink, with g the BP errors (docs/methods.md §5.2): min over units of (a - kink) / g.
template <class Pair>
double kink_crossing_threshold(const mlp<double, Pair>& net, const Matrix<double>& x,
                               const Matrix<double>& y, const std::vector<double>& kinks) {
  forward_state<double> state;
  net.forward(x, state);
  Matrix<double> g(net.output_size(), x.cols());
  net.loss().template gradient<double>(state.z.back(), y, g);
  double threshold = std::numeric_limits<double>::infinity();
  for (Index k = net.depth() - 1; k >= 1; --k) {
    Matrix<double> delta(g.rows(), g.cols());
    net.layer(k).visit([&](const auto& pair) { vjp<double>(pair, state.a[std::size_t(k)], g, delta); });
    g = net.weights(k).transpose() * delta;  // error arriving at z_k, layer index k - 1
    const Matrix<double>& a = state.a[std::size_t(k - 1)];
    for (Index j = 0; j < a.cols(); ++j)
      for (Index i = 0; i < a.rows(); ++i)
        for (const double kink : kinks) {
          const double ratio = (a(i, j) - kink) / g(i, j);
          if (ratio > 0) threshold = std::min(threshold, ratio);
        }
  }
  return threshold;
}

}  // namespace

TEST_CASE("identity pairs: Fenchel BP equals BP for every beta", "[fenbp]") {
  fixture<identity> f;
  for (const double beta : {1e-6, 0.1, 1.0, 10.0, 1000.0}) {
    INFO("beta = " << beta);
    CHECK(f.error_at(beta) < 1e-12);
  }
}

TEMPLATE_TEST_CASE_SIG("piecewise-linear pairs: Fenchel BP equals BP below the kink-crossing "
                       "threshold and differs above it",
                       "[fenbp]", ((class Pair, int kink_set), Pair, kink_set),
                       (relu, 0), (leaky_relu, 0), (hard_sigmoid, 1), (hard_tanh, 2)) {
  const std::vector<double> kinks = kink_set == 0   ? std::vector<double>{0.0}
                                    : kink_set == 1 ? std::vector<double>{0.0, 1.0}
                                                    : std::vector<double>{-1.0, 1.0};
  fixture<Pair> f;
  const double threshold = kink_crossing_threshold(f.net, f.x, f.y, kinks);
  INFO("threshold = " << threshold);
  REQUIRE(threshold > 1e-6);
  REQUIRE(std::isfinite(threshold));
  // Below: exact up to the rounding of (z - f(a - beta g)) / beta.
  CHECK(f.error_at(0.9 * threshold) < 1e-9);
  CHECK(f.error_at(1e-3 * threshold) < 1e-9);
  // Well above: some units cross a kink and the signal changes by O(1) on them.
  CHECK(f.error_at(20 * threshold) > 1e-4);
}

TEMPLATE_TEST_CASE("smooth pairs: Fenchel BP differs from BP by O(beta)", "[fenbp]", sigmoid,
                   tanh_pair, softmax) {
  fixture<TestType> f;
  const double e1 = f.error_at(1e-2), e2 = f.error_at(1e-3), e3 = f.error_at(1e-4);
  INFO("errors " << e1 << " " << e2 << " " << e3);
  CHECK(e3 < 1e-3);
  // Slope of log(error) against log(beta): 1 for a first-order method.
  const double slope = std::log10(e1 / e3) / 2;
  CHECK(slope == Approx(1.0).margin(0.1));
}

TEST_CASE("at a ReLU kink Fenchel BP gives the one-sided derivative min(g, 0)", "[fenbp]") {
  // One sample; hidden unit 0 has a = 0 exactly (zero weights and bias).
  auto net = make_mlp<double, relu, mse>({2, 2, 1});
  net.weights(0) << 0.0, 0.0, 0.5, -0.3;
  net.bias(0) << 0.0, 0.1;
  net.weights(1) << 1.5, 0.8;
  net.bias(1) << 0.0;
  Matrix<double> x(2, 1);
  x << 0.7, 0.2;
  for (const double target : {-1.0, 1.0}) {
    Matrix<double> y(1, 1);
    y << target;
    forward_state<double> state;
    net.forward(x, state);
    const double g = 1.5 * (state.z.back()(0, 0) - target);  // error arriving at hidden unit 0
    Vector<double> fenchel, backprop;
    for (const double beta : {1e-6, 0.5, 3.0}) {
      fenchel_bp<double>(beta).gradient(net, x, y, fenchel);
      // With B = 1 the bias gradient of unit 0 is its signal delta.
      CHECK(net.layer(0).bias(fenchel)(0) == Approx(std::min(g, 0.0)).epsilon(1e-9));
    }
    bp<double>{}.gradient(net, x, y, backprop);
    CHECK(net.layer(0).bias(backprop)(0) == 0.0);  // BP's convention ReLU'(0) = 0
  }
}

TEST_CASE("Fenchel BP weight gradients use the forward activations (Remark 2)", "[fenbp]") {
  // Two layers, closed form written out by hand: delta_2 = dl/dz_2 (identity output),
  // g_1 = W_2^T delta_2, delta_1 = (z_1 - relu(a_1 - beta g_1)) / beta,
  // dW_2 = delta_2 z_1^T / B, dW_1 = delta_1 x^T / B, with the forward z_1.
  random_source random(5);
  auto net = make_mlp<double, relu, mse>({3, 4, 2});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 6);
  const Matrix<double> y = random_matrix<double>(random, 2, 6);
  const double beta = 2.5, B = 6;
  const Matrix<double> a1 = (net.weights(0) * x).colwise() + net.bias(0);
  const Matrix<double> z1 = a1.cwiseMax(0.0);
  const Matrix<double> z2 = (net.weights(1) * z1).colwise() + net.bias(1);
  const Matrix<double> delta2 = z2 - y;
  const Matrix<double> g1 = net.weights(1).transpose() * delta2;
  const Matrix<double> delta1 = (z1 - (a1 - beta * g1).cwiseMax(0.0)) / beta;
  Vector<double> gradient;
  fenchel_bp<double>(beta).gradient(net, x, y, gradient);
  CHECK((net.layer(1).weights(gradient) - delta2 * z1.transpose() / B).norm() < 1e-12);
  CHECK((net.layer(0).weights(gradient) - delta1 * x.transpose() / B).norm() < 1e-12);
  CHECK((net.layer(0).bias(gradient) - delta1.rowwise().sum() / B).norm() < 1e-12);
}

TEST_CASE("Fenchel BP takes one beta per layer", "[fenbp]") {
  fixture<tanh_pair> f;
  Vector<double> per_layer, uniform_small;
  // Only layer 1's beta is large: its gradient moves away from BP, the layers above do not.
  fenchel_bp<double>(std::vector<double>{1.0, 1e-9, 1e-9}).gradient(f.net, f.x, f.y, per_layer);
  const auto& top = f.net.layer(2);
  const auto& bottom = f.net.layer(0);
  CHECK((top.weights(per_layer) - top.weights(f.bp_gradient)).norm() <
        1e-6 * top.weights(f.bp_gradient).norm());
  CHECK((bottom.weights(per_layer) - bottom.weights(f.bp_gradient)).norm() >
        1e-3 * bottom.weights(f.bp_gradient).norm());
}

TEST_CASE("Fenchel BP rejects betas that are not positive or do not match the depth",
          "[fenbp]") {
  CHECK_THROWS_AS(fenchel_bp<double>(0.0), config_error);
  CHECK_THROWS_WITH(fenchel_bp<double>(-1.0), Catch::Contains("fenchel_bp") &&
                                                  Catch::Contains("beta") &&
                                                  Catch::Contains("-1"));
  fixture<relu> f;
  Vector<double> gradient;
  fenchel_bp<double> two_betas(std::vector<double>{1.0, 2.0});
  CHECK_THROWS_WITH(two_betas.gradient(f.net, f.x, f.y, gradient),
                    Catch::Contains("one per layer (3)") && Catch::Contains("got 2"));
}

namespace {
// A copy of a pair with its f_difference hidden: the library falls back to the direct form.
template <class Pair>
struct without_difference {
  Pair pair;
  std::string name() const { return "plain_" + pair.name(); }
  template <class S> S f(S a) const { return pair.f(a); }
  template <class S> S df(S a) const { return pair.df(a); }
  template <class S> S G(S a) const { return pair.G(a); }
  template <class S> S G_conj(S z) const { return pair.G_conj(z); }
};

/// One 7-16-12-5 program with softmax cross-entropy in double and in float: the float program
/// holds the double parameters rounded, and the double one takes those rounded values back, so
/// both start from the same numbers.
template <class Pair>
struct two_precisions {
  random_source random{3};
  mlp<double, Pair> high = make_mlp<double, Pair>({7, 16, 12, 5});
  mlp<float, Pair> low = make_mlp<float, Pair>({7, 16, 12, 5});
  Matrix<double> x, y;
  two_precisions() {
    randomize(high, random, 0.6);
    x = random_matrix<double>(random, 7, 24);
    y = random_one_hot<double>(random, 5, 24);
    low.parameters() = high.parameters().template cast<float>();
    high.parameters() = low.parameters().template cast<double>();
  }
  /// Relative error of a method's gradient in float against the same method's in double.
  template <class Method>
  double float_against_double(Method&& method) {
    Vector<double> high_gradient;
    Vector<float> low_gradient;
    method(double{}).gradient(high, x, y, high_gradient);
    method(float{}).gradient(low, x.cast<float>(), y.cast<float>(), low_gradient);
    return relative_error(low_gradient.cast<double>(), high_gradient);
  }
};
}  // namespace

TEMPLATE_TEST_CASE_SIG("float Fenchel BP equals double Fenchel BP to float rounding at every beta",
                       "[fenbp][precision]", ((class Pair, int kink_set), Pair, kink_set),
                       (relu, 0), (leaky_relu, 0), (hard_sigmoid, 1), (hard_tanh, 2),
                       (sigmoid, 3), (tanh_pair, 3), (softmax, 3)) {
  two_precisions<Pair> f;
  if (kink_set < 3) {
    // A unit whose a - beta g crosses a kink has delta = (kink - a) / beta, which carries the
    // float error of a times 1 / beta in any implementation: this program has none up to 1e-4.
    const std::vector<double> kinks = kink_set == 0   ? std::vector<double>{0.0}
                                      : kink_set == 1 ? std::vector<double>{0.0, 1.0}
                                                      : std::vector<double>{-1.0, 1.0};
    REQUIRE(kink_crossing_threshold(f.high, f.x, f.y, kinks) > 1e-4);
  }
  // BP's float-against-double error is what float's forward pass and products alone cost.
  const double bp_error = f.float_against_double([](auto scalar) { return bp<decltype(scalar)>{}; });
  for (const double beta : {1e-4, 1e-6, 1e-8, 1e-10}) {
    const double error = f.float_against_double([beta](auto scalar) {
      using S = decltype(scalar);
      return fenchel_bp<S>(S(beta));
    });
    INFO("beta = " << beta << ": " << error << " (BP's: " << bp_error << ")");
    CHECK(error < 2 * bp_error);
  }
}

TEST_CASE("without an exact difference, float's Fenchel BP signal loses about u / beta",
          "[fenbp][precision]") {
  // What the test above guards against: the direct form (z - f(a - beta g)) / beta in float.
  random_source random(4);
  const Matrix<double> a = random_matrix<double>(random, 16, 24), g = random_matrix<double>(random, 16, 24);
  const double beta = 1e-4;
  Matrix<double> z(16, 24), exact(16, 24);
  activate<double>(sigmoid{}, a, z);
  fenchel_signal<double>(sigmoid{}, a, z, g, beta, exact);
  const Matrix<float> a_low = a.cast<float>(), g_low = g.cast<float>();
  Matrix<float> z_low(16, 24), direct(16, 24), kept(16, 24);
  activate<float>(sigmoid{}, a_low, z_low);
  fenchel_signal<float>(without_difference<sigmoid>{}, a_low, z_low, g_low, 1e-4f, direct);
  fenchel_signal<float>(sigmoid{}, a_low, z_low, g_low, 1e-4f, kept);
  const double direct_error = (direct.cast<double>() - exact).norm() / exact.norm();
  const double kept_error = (kept.cast<double>() - exact).norm() / exact.norm();
  INFO("direct " << direct_error << ", exact difference " << kept_error);
  CHECK(direct_error > 1e-4);
  CHECK(kept_error < 1e-6);
}

TEST_CASE("Fenchel BP refuses a beta below sqrt(epsilon) only for a pair without an exact "
          "difference",
          "[fenbp][precision]") {
  random_source random(6);
  const Matrix<float> x = random_matrix<float>(random, 4, 8);
  const Matrix<float> y = random_one_hot<float>(random, 3, 8);
  program<float, softmax_cross_entropy, without_difference<relu>, identity> user(
      {4, 6, 3}, {without_difference<relu>{}, identity{}});
  user.initialize(init_scheme::glorot_uniform, random);
  Vector<float> gradient;
  // sqrt(epsilon of float) = 3.45e-4.
  CHECK_THROWS_AS(fenchel_bp<float>(1e-4f).gradient(user, x, y, gradient), config_error);
  CHECK_THROWS_WITH(fenchel_bp<float>(1e-4f).gradient(user, x, y, gradient),
                    Catch::Contains("fenchel_bp::gradient") && Catch::Contains("layer 1") &&
                        Catch::Contains("plain_relu") && Catch::Contains("0.0001") &&
                        Catch::Contains("sqrt(machine epsilon)") &&
                        Catch::Contains("f_difference"));
  CHECK_NOTHROW(fenchel_bp<float>(4e-4f).gradient(user, x, y, gradient));
  // The identity output layer has an exact difference: its beta may be anything.
  CHECK_NOTHROW(fenchel_bp<float>(std::vector<float>{4e-4f, 1e-12f}).gradient(user, x, y, gradient));
  CHECK_THROWS_WITH(fenchel_bp<float>(std::vector<float>{1e-5f, 1.0f}).gradient(user, x, y, gradient),
                    Catch::Contains("1e-05"));
  // Built-in pairs are never refused.
  auto built_in = make_mlp<float, relu>({4, 6, 3});
  built_in.initialize(init_scheme::glorot_uniform, random);
  CHECK_NOTHROW(fenchel_bp<float>(1e-12f).gradient(built_in, x, y, gradient));
  // In double the threshold is sqrt(2.2e-16) = 1.49e-8.
  program<double, softmax_cross_entropy, without_difference<relu>, identity> user_double(
      {4, 6, 3}, {without_difference<relu>{}, identity{}});
  user_double.initialize(init_scheme::glorot_uniform, random);
  Vector<double> gradient_double;
  CHECK_THROWS_AS(fenchel_bp<double>(1e-8).gradient(user_double, x.cast<double>(),
                                                    y.cast<double>(), gradient_double),
                  config_error);
  CHECK_NOTHROW(fenchel_bp<double>(2e-8).gradient(user_double, x.cast<double>(), y.cast<double>(),
                                                  gradient_double));
}

TEST_CASE("the paper's negative start: every first-layer ReLU is dead, BP learns only the output "
          "bias, Fenchel BP moves the kinks and, at large beta, layer 1",
          "[fenbp][init]") {
  // The paper's MLP shape scaled down, on non-negative inputs (like MNIST's pixels).
  random_source random(12);
  auto net = make_mlp<double, relu>({30, 16, 12, 8, 4});
  net.initialize(init_scheme::negative_first_layer, random);
  const Matrix<double> x = random_matrix<double>(random, 30, 20).cwiseAbs();
  const Matrix<double> y = random_one_hot<double>(random, 4, 20);
  forward_state<double> state;
  net.forward(x, state);
  CHECK((state.a[0].array() < 0).all());  // a_1 = W_1 x < 0: all dead
  CHECK(state.z[1].isZero(0));
  CHECK(state.a[1].isZero(0));  // a_2 = b_2 = 0 and a_3 = b_3 = 0: on their kinks
  CHECK(state.a[2].isZero(0));
  CHECK((net.weights(1).array() > 0).any());  // layers 2 and up keep glorot's signs
  CHECK((net.weights(3).array() > 0).any());

  // BP: ReLU'(0) = 0 on every kink, so only the output bias gets a gradient.
  Vector<double> gradient;
  bp<double>{}.gradient(net, x, y, gradient);
  const Vector<double> output_bias = net.layer(3).bias(gradient);
  CHECK(output_bias.norm() > 0);
  CHECK(gradient.norm() == Approx(output_bias.norm()));

  // Fenchel BP at small beta: one-sided signals on the kinks move b_2 and b_3 (W_2 and W_3 see
  // z_1 = z_2 = 0), never layer 1, whose a_1 - beta g_1 stays negative.
  fenchel_bp<double>(1e-3).gradient(net, x, y, gradient);
  CHECK(net.layer(0).weights(gradient).isZero(0));
  CHECK(net.layer(0).bias(gradient).isZero(0));
  CHECK(net.layer(1).weights(gradient).isZero(0));
  CHECK(net.layer(2).weights(gradient).isZero(0));
  CHECK(net.layer(1).bias(gradient).norm() + net.layer(2).bias(gradient).norm() > 0);
  // Large beta: first-layer units with beta g_1 < a_1 < 0 come alive, and W_1 moves.
  fenchel_bp<double>(1e4).gradient(net, x, y, gradient);
  CHECK(net.layer(0).weights(gradient).norm() > 0);

  // The all-negative variant negates every layer.
  random_source again(12);
  auto every = make_mlp<double, relu>({30, 16, 12, 8, 4});
  every.initialize(init_scheme::negative_all_layers, again);
  for (Index k = 0; k < every.depth(); ++k) {
    INFO("layer " << k + 1);
    CHECK((every.weights(k).array() <= 0).all());
    const Matrix<double> expected = -net.weights(k).cwiseAbs();  // the same draws, all negated
    CHECK(every.weights(k) == expected);
  }
}
