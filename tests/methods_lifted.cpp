// LPOM and FLN (METHODS.md §5.5): the estimate lambda d_theta E at the z-minimiser tends to BP
// as lambda -> infinity; block coordinate descent never increases J and decreases it strictly
// from the forward pass; a solved ReLU block satisfies its KKT conditions; a softmax output
// layer works through its negative-entropy conjugate; native steps train.

#include <catch2/catch.hpp>
#include <cmath>

#include "bilevel/activations/activations.hpp"
#include "bilevel/couplings/fenchel.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/methods/fln.hpp"
#include "bilevel/methods/lpom.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

lifted_settings<double> tight(double lambda) {
  lifted_settings<double> s;
  s.lambda = {lambda};
  s.sweeps = 300;
  s.block_iterations = 50;
  s.block_tolerance = 1e-13;
  return s;
}

/// J at state z for the program's current parameters, written from METHODS.md §5.5 directly.
template <class Program>
double lifted_value(const Program& net, const std::vector<Matrix<double>>& z,
                    const Matrix<double>& y, double lambda) {
  const Matrix<double> energies = net.template layer_energies<fenchel_coupling>(z);
  return (net.loss_values(z.back(), y).array() + lambda * energies.colwise().sum().array()).mean();
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
  std::vector<double> errors;
  for (const double lambda : {10.0, 100.0, 1000.0}) {
    TestType method(tight(lambda));
    const step_report report = method.gradient(net, x, y, gradient);
    // FLN solves each block to its tolerance; LPOM's safeguarded fixed point stalls earlier, at
    // the rounding of the block values it compares.
    CHECK(report.inner_residual < (std::is_same_v<TestType, fln<double>> ? 1e-9 : 1e-7));
    errors.push_back(relative_error(gradient, reference));
    const double cosine = gradient.dot(reference) / (gradient.norm() * reference.norm());
    CHECK(cosine > 1 - 2 * errors.back());
  }
  INFO("errors " << errors[0] << " " << errors[1] << " " << errors[2]);
  CHECK(errors[2] < 2e-3);
  CHECK(std::log10(errors[0] / errors[2]) / 2 == Approx(1.0).margin(0.15));
}

TEMPLATE_TEST_CASE("block coordinate descent never increases J and decreases it strictly from "
                   "the forward pass",
                   "[lpom][fln]", lpom<double>, fln<double>) {
  random_source random(52);
  auto net = make_mlp<double, relu>({5, 8, 6, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 3, 7);
  forward_state<double> forward;
  net.forward(x, forward);
  const double at_forward = lifted_value(net, forward.z, y, 2.0);
  double previous = at_forward;
  for (const Index sweeps : {1, 2, 3, 5, 8, 13}) {
    lifted_settings<double> s;
    s.lambda = {2.0};
    s.sweeps = sweeps;
    s.block_iterations = 1;
    TestType method(s);
    Vector<double> gradient;
    const step_report report = method.gradient(net, x, y, gradient);
    const double value = lifted_value(net, method.state(), y, 2.0);
    CHECK(value == Approx(report.inner_energy).epsilon(1e-12));
    CHECK(value <= previous + 1e-12);
    previous = value;
  }
  CHECK(previous < at_forward - 1e-3);
}

TEMPLATE_TEST_CASE("W-steps never increase J at fixed z and native steps train", "[lpom][fln]",
                   lpom<double>, fln<double>) {
  random_source random(53);
  auto net = make_mlp<double, relu>({4, 12, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 40);
  Matrix<double> y = Matrix<double>::Zero(3, 40);
  for (Index j = 0; j < 40; ++j) y(x(0, j) > 0 ? (x(1, j) > 0 ? 0 : 1) : 2, j) = 1;
  lifted_settings<double> s;
  s.lambda = {1.0};
  TestType method(s);
  double first_loss = 0, last_loss = 0;
  for (int step = 0; step < 60; ++step) {
    const step_report report = method.train_step(net, x, y);
    const double after = lifted_value(net, method.state(), y, 1.0);
    CHECK(after <= report.inner_energy + 1e-12);
    (step == 0 ? first_loss : last_loss) = report.loss;
  }
  INFO("loss " << first_loss << " -> " << last_loss);
  CHECK(last_loss < 0.6 * first_loss);
}

TEST_CASE("a solved FLN ReLU block satisfies its non-negative KKT conditions", "[fln]") {
  random_source random(54);
  auto net = make_mlp<double, relu>({4, 7, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 5);
  const Matrix<double> y = random_one_hot<double>(random, 3, 5);
  const double lambda = 3.0;
  fln<double> method(tight(lambda));
  Vector<double> gradient;
  method.gradient(net, x, y, gradient);
  const auto& z = method.state();
  // Block z_1: lambda (z_1 - a_1) + lambda W_2^T (W_2 z_1 + b_2 - z_2) (identity layer 2).
  const Matrix<double> a1 = (net.weights(0) * x).colwise() + net.bias(0);
  const Matrix<double> a2 = (net.weights(1) * z[1]).colwise() + net.bias(1);
  const Matrix<double> g = lambda * (z[1] - a1) + lambda * net.weights(1).transpose() * (a2 - z[2]);
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
  lpom<double> method(tight(1e4));
  const step_report report = method.gradient(net, x, y, gradient);
  CHECK(report.inner_residual < 1e-8);
  const Matrix<double>& top = method.state().back();
  CHECK(top.minCoeff() > 0.0);
  CHECK((top.colwise().sum().array() - 1).abs().maxCoeff() < 1e-12);
  CHECK(relative_error(gradient, reference) < 1e-3);
}

TEST_CASE("LPOM and FLN reject invalid settings", "[lpom][fln]") {
  lifted_settings<double> s;
  s.lambda = {0.0};
  CHECK_THROWS_WITH(lpom<double>(s), Catch::Contains("lpom") && Catch::Contains("lambda"));
  s.lambda = {1.0, 2.0};
  fln<double> method(s);
  auto net = make_mlp<double, relu>({3, 4, 5, 2});
  Vector<double> gradient;
  CHECK_THROWS_WITH(method.gradient(net, Matrix<double>::Zero(3, 2), Matrix<double>::Zero(2, 2),
                                    gradient),
                    Catch::Contains("one per layer (3)"));
}
