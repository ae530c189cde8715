// LPOM and FLN (docs/methods.md §5.5): the estimate lambda d_theta E at the z-minimiser tends to
// BP as lambda -> infinity and, at finite and distinct lambdas, is the gradient of the value
// min_z J; block coordinate descent never increases J; LPOM's result satisfies its fixed-point
// equation and its safeguard is reported; on one objective LPOM and FLN reach one minimiser by
// different iterates; FLN's output is on the true loss and its solved ReLU block meets its KKT
// conditions; a softmax output layer works through its negative-entropy conjugate; native steps
// train.

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "bilevel/activations/activations.hpp"
#include "bilevel/couplings/fenchel.hpp"
#include "bilevel/losses/mse.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/methods/fln.hpp"
#include "bilevel/methods/lpom.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

template <class Method>
lifted_settings<double> tight(std::vector<double> lambda) {
  lifted_settings<double> s =
      std::is_same_v<Method, fln<double>> ? fln<double>::default_settings() : lifted_settings<double>{};
  s.lambda = std::move(lambda);
  s.stopping = {1e-10, 20000};
  return s;
}

/// J at state z for the program's current parameters, written from §5.5 directly: per-layer
/// lambdas, and the output either lifted (z_L a variable) or on the true loss of f_L(a_L).
template <class Program>
double lifted_value(const Program& net, const std::vector<Matrix<double>>& z,
                    const Matrix<double>& y, const std::vector<double>& lambda, bool lifted) {
  const Matrix<double> energies = net.template layer_energies<fenchel_coupling>(z);
  Eigen::ArrayXd total = net.loss_values(z.back(), y).transpose().array();
  for (Index k = 0; k < net.depth(); ++k) {
    if (k + 1 == net.depth() && !lifted) continue;
    total += lambda[std::size_t(lambda.size() == 1 ? 0 : k)] * energies.row(k).transpose().array();
  }
  return total.mean();
}

}  // namespace

TEMPLATE_TEST_CASE("LPOM and FLN estimates tend to BP as lambda -> infinity", "[lpom][fln]",
                   lpom<double>, fln<double>) {
  random_source random(51);
  auto net = make_mlp<double, tanh_pair>({4, 6, 5, 3});
  randomize(net, random, 0.6);
  const Matrix<double> x = random_matrix<double>(random, 4, 6);
  const Matrix<double> y = random_one_hot<double>(random, 3, 6);
  Vector<double> reference, gradient;
  bp<double>{}.gradient(net, x, y, reference);
  for (const inner_start start : {inner_start::forward, inner_start::first_order}) {
    std::vector<double> errors;
    for (const double lambda : {10.0, 100.0, 1000.0}) {
      auto s = tight<TestType>({lambda});
      s.start = start;
      TestType method(s);
      const step_report report = method.gradient(net, x, y, gradient);
      CHECK(report.converged());
      CHECK(report.inner_residual < 1e-9);
      errors.push_back(relative_error(gradient, reference));
      const double cosine = gradient.dot(reference) / (gradient.norm() * reference.norm());
      CHECK(cosine > 1 - 2 * errors.back());
    }
    INFO("errors " << errors[0] << " " << errors[1] << " " << errors[2]);
    CHECK(errors[2] < 2e-3);
    CHECK(std::log10(errors[0] / errors[2]) / 2 == Approx(1.0).margin(0.15));
  }
}

TEMPLATE_TEST_CASE("at finite, distinct lambdas the estimate is the gradient of min_z J",
                   "[lpom][fln]", lpom<double>, fln<double>) {
  // The envelope theorem: d/dtheta min_z J(z, theta) = d_theta J(z*, theta). Central
  // differences of the solved value, no BP involved; distinct lambdas so that a slip in a
  // layer's multiplier, or in which lambda a block reads, shows.
  random_source random(56);
  program<double, softmax_cross_entropy, tanh_pair, sigmoid, identity> net(
      {3, 5, 4, 3}, {tanh_pair{}, sigmoid{}, identity{}});
  randomize(net, random, 0.7);
  const Matrix<double> x = random_matrix<double>(random, 3, 4);
  const Matrix<double> y = random_one_hot<double>(random, 3, 4);
  const std::vector<double> lambda = {2.0, 5.0, 3.0};
  TestType method(tight<TestType>(lambda));
  Vector<double> gradient;
  method.gradient(net, x, y, gradient);
  auto value = [&](const decltype(net)& perturbed) {
    TestType inner(tight<TestType>(lambda));
    Vector<double> unused;
    return inner.gradient(perturbed, x, y, unused).inner_energy;
  };
  Vector<double> numeric(net.parameter_count());
  for (Index i = 0; i < net.parameter_count(); ++i) {
    auto plus = net, minus = net;
    plus.parameters()(i) += 1e-5;
    minus.parameters()(i) -= 1e-5;
    numeric(i) = (value(plus) - value(minus)) / 2e-5;
  }
  CHECK(relative_error(gradient, numeric) < 1e-6);
}

TEMPLATE_TEST_CASE("block coordinate descent never increases J and decreases it strictly from "
                   "the forward pass, with one update per block and sweep or several",
                   "[lpom][fln]", lpom<double>, fln<double>) {
  random_source random(52);
  auto net = make_mlp<double, relu>({5, 8, 6, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 3, 7);
  const bool lifted = std::is_same_v<TestType, lpom<double>>;
  forward_state<double> forward;
  net.forward(x, forward);
  const double at_forward = lifted_value(net, forward.z, y, {2.0}, lifted);
  // The updates after a block's first read the feedback at the block's new state, which a
  // block's last update leaves uncomputed (docs/methods.md §5.5).
  std::vector<Vector<double>> minimisers;
  for (const Index updates : {1, 3}) {
    CAPTURE(updates);
    auto s = tight<TestType>({2.0});
    s.start = inner_start::forward;
    s.block_iterations = updates;
    double previous = at_forward;
    for (const Index sweeps : {1, 2, 3, 5, 8, 13}) {
      s.stopping.max_iterations = sweeps;
      TestType method(s);
      Vector<double> gradient;
      const step_report report = method.gradient(net, x, y, gradient);
      const double value = lifted_value(net, method.state(), y, {2.0}, lifted);
      CAPTURE(sweeps);
      CHECK(value == Approx(report.inner_energy).epsilon(1e-12));
      CHECK(value <= previous + 1e-12);
      previous = value;
    }
    CHECK(previous < at_forward - 1e-3);
    s.stopping.max_iterations = 20000;
    TestType(s).gradient(net, x, y, minimisers.emplace_back());
  }
  CHECK(relative_error(minimisers[1], minimisers[0]) < 1e-6);
}

TEST_CASE("LPOM's result satisfies its fixed-point equation, and its safeguard is reported",
          "[lpom]") {
  random_source random(57);
  auto net = make_mlp<double, relu>({5, 8, 6, 3});
  randomize(net, random, 0.8);
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 3, 7);
  const std::vector<double> lambda = {3.0, 2.0, 4.0};
  lpom<double> method(tight<lpom<double>>(lambda));
  Vector<double> gradient;
  const step_report report = method.gradient(net, x, y, gradient);
  REQUIRE(report.converged());
  CHECK(report.safeguarded >= 0.0);
  CHECK(report.safeguarded <= 1.0);
  // z_k = f(a_k - (lambda_{k+1} / lambda_k) W_{k+1}^T (f(a_{k+1}) - z_{k+1})), and at the top
  // z_L = f(a_L - grad l(z_L) / lambda_L), with the identity output pair.
  const auto& z = method.state();
  forward_state<double> forward;
  net.forward(x, forward);
  for (Index k = 1; k <= 3; ++k) {
    const auto i = std::size_t(k);
    const Matrix<double> a = (net.weights(k - 1) * z[i - 1]).colwise() + net.bias(k - 1);
    Matrix<double> argument;
    if (k < 3) {
      const Matrix<double> above = (net.weights(k) * z[i]).colwise() + net.bias(k);
      const Matrix<double> residual = above.cwiseMax(0.0) - z[i + 1];
      argument = a - (lambda[i] / lambda[i - 1]) * net.weights(k).transpose() *
                         (k + 1 < 3 ? residual : Matrix<double>(above - z[i + 1]));
    } else {
      Matrix<double> g(3, 7);
      softmax_cross_entropy{}.gradient<double>(z[i], y, g);
      argument = a - g / lambda[i - 1];
    }
    const Matrix<double> image = k < 3 ? Matrix<double>(argument.cwiseMax(0.0)) : argument;
    INFO("layer " << k);
    CHECK((z[i] - image).norm() < 1e-6 * (z[i] - forward.z[i]).norm());
  }
}

TEST_CASE("LPOM's fixed point needs no safeguard where its map contracts, and many where it "
          "does not",
          "[lpom]") {
  random_source random(58);
  auto net = make_mlp<double, relu>({5, 8, 6, 3});
  randomize(net, random, 0.1);  // ||W||^2 well below 1: lambda_{k+1}/lambda_k ||W||^2 < 1
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 3, 7);
  Vector<double> gradient;
  lifted_settings<double> s;
  s.lambda = {1.0};
  s.stopping.max_iterations = 5000;
  s.extrapolation = 0;  // the fixed-point map itself, from each sweep's own result
  const step_report contracting = lpom<double>(s).gradient(net, x, y, gradient);
  CHECK(contracting.converged());
  CHECK(contracting.safeguarded == 0.0);
  randomize(net, random, 1.5);  // ||W||^2 well above 1
  const step_report expanding = lpom<double>(s).gradient(net, x, y, gradient);
  CHECK(expanding.converged());
  CHECK(expanding.safeguarded > 0.05);
}

TEST_CASE("on one objective LPOM and FLN reach the same minimiser by different iterates",
          "[lpom][fln]") {
  // Identity hidden pairs make J jointly convex (each E_k = 1/2 ||z_k - a_k||^2): one minimiser.
  random_source random(59);
  auto net = make_mlp<double, identity>({4, 6, 5, 3});
  randomize(net, random, 0.6);
  const Matrix<double> x = random_matrix<double>(random, 4, 6);
  const Matrix<double> y = random_one_hot<double>(random, 3, 6);
  auto s = tight<lpom<double>>({2.0, 0.5, 4.0});
  s.start = inner_start::forward;
  s.output_lifted = true;
  lpom<double> fixed_point(s);
  fln<double> proximal(s);
  Vector<double> g_lpom, g_fln;
  fixed_point.gradient(net, x, y, g_lpom);
  proximal.gradient(net, x, y, g_fln);
  CHECK(relative_error(g_fln, g_lpom) < 1e-7);
  for (std::size_t k = 1; k < 4; ++k)
    CHECK((fixed_point.state()[k] - proximal.state()[k]).norm() <
          1e-7 * fixed_point.state()[k].norm());
  s.stopping.max_iterations = 1;  // one sweep each: the iterates differ
  lpom<double> one_lpom(s);
  fln<double> one_fln(s);
  one_lpom.gradient(net, x, y, g_lpom);
  one_fln.gradient(net, x, y, g_fln);
  CHECK((one_lpom.state()[1] - one_fln.state()[1]).norm() > 1e-4 * one_lpom.state()[1].norm());
}

TEMPLATE_TEST_CASE("W-steps never increase J at fixed z and native steps train", "[lpom][fln]",
                   lpom<double>, fln<double>) {
  random_source random(53);
  auto net = make_mlp<double, relu>({4, 12, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 40);
  Matrix<double> y = Matrix<double>::Zero(3, 40);
  for (Index j = 0; j < 40; ++j) y(x(0, j) > 0 ? (x(1, j) > 0 ? 0 : 1) : 2, j) = 1;
  auto s = std::is_same_v<TestType, fln<double>> ? fln<double>::default_settings()
                                                  : lifted_settings<double>{};
  s.lambda = {1.0};
  TestType method(s);
  const bool lifted = s.output_lifted;
  double first_loss = 0, last_loss = 0;
  for (int step = 0; step < 60; ++step) {
    const step_report report = method.train_step(net, x, y);
    const double after = lifted_value(net, method.state(), y, {1.0}, lifted);
    CHECK(after <= report.inner_energy + 1e-12);
    (step == 0 ? first_loss : last_loss) = report.loss;
  }
  INFO("loss " << first_loss << " -> " << last_loss);
  CHECK(last_loss < 0.6 * first_loss);
}

TEST_CASE("FLN's output is on the true loss: its solved ReLU block meets the KKT conditions",
          "[fln]") {
  random_source random(54);
  auto net = make_mlp<double, relu>({4, 7, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 5);
  const Matrix<double> y = random_one_hot<double>(random, 3, 5);
  const double lambda = 3.0;
  fln<double> method(tight<fln<double>>({lambda}));
  Vector<double> gradient;
  method.gradient(net, x, y, gradient);
  const auto& z = method.state();
  // The one block z_1: lambda (z_1 - a_1) + W_2^T grad l(W_2 z_1 + b_2) (identity output on
  // the loss), with z_2 = a_2 no variable.
  const Matrix<double> a1 = (net.weights(0) * x).colwise() + net.bias(0);
  const Matrix<double> a2 = (net.weights(1) * z[1]).colwise() + net.bias(1);
  CHECK((z[2] - a2).norm() < 1e-12 * a2.norm());
  Matrix<double> dl(3, 5);
  softmax_cross_entropy{}.gradient<double>(a2, y, dl);
  const Matrix<double> g = lambda * (z[1] - a1) + net.weights(1).transpose() * dl;
  CHECK(z[1].minCoeff() >= 0.0);
  CHECK(g.minCoeff() > -1e-9);                                // dual feasibility
  CHECK(z[1].cwiseProduct(g).cwiseAbs().maxCoeff() < 1e-9);  // complementarity
  CHECK((z[1].array() > 1e-9).count() > 0);
}

TEST_CASE("a softmax output layer fits through its negative-entropy conjugate", "[lpom]") {
  random_source random(55);
  program<double, mse, relu, softmax> net({4, 6, 3}, {relu{}, softmax{}});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 5);
  const Matrix<double> y = random_one_hot<double>(random, 3, 5);
  Vector<double> reference, gradient;
  bp<double>{}.gradient(net, x, y, reference);
  lpom<double> method(tight<lpom<double>>({1e4}));
  const step_report report = method.gradient(net, x, y, gradient);
  CHECK(report.converged());
  const Matrix<double>& top = method.state().back();
  CHECK(top.minCoeff() > 0.0);
  CHECK((top.colwise().sum().array() - 1).abs().maxCoeff() < 1e-12);
  CHECK(relative_error(gradient, reference) < 1e-3);
}

TEMPLATE_TEST_CASE("a capped z-solve reports its unconverged samples", "[lpom][fln]",
                   lpom<double>, fln<double>) {
  random_source random(60);
  auto net = make_mlp<double, relu>({5, 8, 6, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 3, 7);
  auto s = tight<TestType>({0.5});
  s.start = inner_start::forward;
  s.stopping.max_iterations = 1;
  Vector<double> gradient;
  const step_report report = TestType(s).gradient(net, x, y, gradient);
  CHECK(report.inner_iterations == 1);
  CHECK(report.unconverged > 0);
}

TEMPLATE_TEST_CASE("a sample's minimiser does not depend on its batch: the solve retires "
                   "converged samples and keeps each one's own data",
                   "[lpom][fln]", lpom<double>, fln<double>) {
  auto s = tight<TestType>({3.0});
  s.stopping.tolerance = 1e-9;
  const auto measured = batch_dependence<relu>(
      58, [&] { return TestType(s); }, [](const TestType& m) -> const auto& { return m.state(); });
  REQUIRE(measured.batch_converged);
  // The samples converge at different sweeps, so the batch's solve retires them in turn.
  CHECK(measured.fewest_sweeps < measured.most_sweeps);
  CHECK(measured.largest < 1e-6);
}

TEMPLATE_TEST_CASE("extrapolated sweeps reach the plain sweeps' minimiser in fewer sweeps, and J "
                   "never increases from one sweep to the next",
                   "[lpom][fln]", lpom<double>, fln<double>) {
  // A chain of six blocks, where plain block coordinate descent zig-zags (docs/methods.md §5.6b);
  // identity hidden pairs make J jointly convex, so both reach its one minimiser.
  random_source random(61);
  auto net = make_mlp<double, identity>({5, 8, 8, 8, 8, 8, 3});
  randomize(net, random, 0.6);
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 3, 7);
  const bool lifted = std::is_same_v<TestType, lpom<double>>;
  auto s = tight<TestType>({2.0});
  s.stopping.tolerance = 1e-9;
  s.start = inner_start::forward;
  s.extrapolation = 0;
  TestType plain(s);
  s.extrapolation = 0.95;
  TestType accelerated(s);
  Vector<double> gradient;
  const step_report plain_report = plain.gradient(net, x, y, gradient);
  const step_report accelerated_report = accelerated.gradient(net, x, y, gradient);
  REQUIRE(plain_report.converged());
  REQUIRE(accelerated_report.converged());
  CAPTURE(plain_report.inner_iterations, accelerated_report.inner_iterations);
  CHECK(2 * accelerated_report.inner_iterations < plain_report.inner_iterations);
  for (std::size_t k = 1; k < plain.state().size(); ++k)
    CHECK(relative_error(accelerated.state()[k].reshaped(), plain.state()[k].reshaped()) < 1e-6);
  // J after 1, 2, ... sweeps never rises.
  const auto never_rises = [&s, lifted](const auto& net, const Matrix<double>& batch,
                                        const Matrix<double>& labels, Index sweeps) {
    double previous = std::numeric_limits<double>::infinity();
    Vector<double> g;
    for (Index k = 1; k <= sweeps; ++k) {
      s.stopping.max_iterations = k;
      TestType capped(s);
      capped.gradient(net, batch, labels, g);
      const double value = lifted_value(net, capped.state(), labels, {2.0}, lifted);
      CAPTURE(k);
      CHECK(value <= previous + 1e-12);
      previous = value;
    }
  };
  // On ReLU layers, whose blocks have kinks and a domain to stay in.
  auto relu_net = make_mlp<double, relu>({5, 8, 8, 8, 8, 8, 3});
  randomize(relu_net, random, 0.9);
  never_rises(relu_net, x, y, 30);
  // On tanh layers, whose prox of G* has no closed form: iterates deep in saturation, where
  // Newton's method alone cycles between the ends of its bracket (activations/displacement.hpp).
  random_source tanh_random(10);
  const Matrix<double> tanh_x = random_matrix<double>(tanh_random, 5, 7);
  const Matrix<double> tanh_y = random_one_hot<double>(tanh_random, 3, 7);
  auto tanh_net = make_mlp<double, tanh_pair>({5, 8, 8, 8, 8, 8, 3});
  randomize(tanh_net, tanh_random, 0.9);
  never_rises(tanh_net, tanh_x, tanh_y, 40);
}

TEST_CASE("LPOM and FLN reject invalid settings", "[lpom][fln]") {
  lifted_settings<double> s;
  s.lambda = {0.0};
  CHECK_THROWS_WITH(lpom<double>(s), Catch::Contains("lpom") && Catch::Contains("lambda"));
  s.lambda = {1.0};
  s.stopping.tolerance = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(fln<double>(s), Catch::Contains("fln") && Catch::Contains("tolerance"));
  s.stopping.tolerance = 1e-3;
  for (const double factor : {1.0, -0.5, std::numeric_limits<double>::quiet_NaN()}) {
    s.extrapolation = factor;
    CHECK_THROWS_WITH(lpom<double>(s), Catch::Contains("lpom") &&
                                           Catch::Contains("extrapolation") &&
                                           Catch::Contains("in [0, 1)"));
  }
  s.extrapolation = 0;
  s.lambda = {1.0, 2.0};
  fln<double> method(s);
  auto net = make_mlp<double, relu>({3, 4, 5, 2});
  Vector<double> gradient;
  CHECK_THROWS_WITH(method.gradient(net, Matrix<double>::Zero(3, 2), Matrix<double>::Ones(2, 2) / 2,
                                    gradient),
                    Catch::Contains("one per layer (3)"));
}
