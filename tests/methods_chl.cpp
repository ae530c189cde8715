// CHL (METHODS.md §5.3): the beta -> 0 limit to BP at fixed gamma, the §4 closed form at finite
// beta, finite differences of the surrogate L_beta itself, and the clamped phase's solver.

#include <catch2/catch.hpp>
#include <cmath>

#include "bilevel/activations/activations.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/methods/chl.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

chl<double>::settings tight(double beta, double gamma) {
  chl<double>::settings s;
  s.beta = beta;
  s.gamma = gamma;
  s.max_sweeps = 500;
  s.block_iterations = 50;
  s.tolerance = 1e-12;
  return s;
}

double cosine(const Vector<double>& a, const Vector<double>& b) {
  return a.dot(b) / (a.norm() * b.norm());
}

}  // namespace

TEMPLATE_TEST_CASE("CHL tends to BP as beta -> 0 at fixed gamma, error O(beta)", "[chl]",
                   tanh_pair, sigmoid, relu) {
  random_source random(41);
  auto net = make_mlp<double, TestType>({4, 6, 5, 3});
  randomize(net, random, 0.6);
  const Matrix<double> x = random_matrix<double>(random, 4, 6);
  const Matrix<double> y = random_one_hot<double>(random, 3, 6);
  Vector<double> reference, gradient;
  bp<double>{}.gradient(net, x, y, reference);
  for (const double gamma : {1.0, 0.5}) {
    std::vector<double> errors;
    for (const double beta : {1e-2, 1e-3, 1e-4}) {
      chl<double> method(tight(beta, gamma));
      const step_report report = method.gradient(net, x, y, gradient);
      CHECK(report.inner_residual < 1e-12);
      errors.push_back(relative_error(gradient, reference));
      CHECK(cosine(gradient, reference) > 1 - 10 * errors.back());
    }
    INFO("gamma " << gamma << " errors " << errors[0] << " " << errors[1] << " " << errors[2]);
    CHECK(errors[2] < 1e-3);
    CHECK(errors[2] < errors[1]);
    CHECK(errors[1] < errors[0]);
    // Smooth pairs: first order in beta. ReLU: exact once no unit crosses its kink.
    if (!std::is_same_v<TestType, relu>) CHECK(std::log10(errors[0] / errors[2]) / 2 == Approx(1.0).margin(0.15));
  }
}

TEST_CASE("CHL on one identity layer with MSE has the closed form (a - y) x^T / (1 + beta)",
          "[chl]") {
  random_source random(42);
  program<double, mse, identity> net({3, 2}, {identity{}});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 4);
  const Matrix<double> y = random_matrix<double>(random, 2, 4);
  const Matrix<double> a = (net.weights(0) * x).colwise() + net.bias(0);
  for (const double beta : {0.1, 1.0, 5.0}) {
    Vector<double> gradient;
    chl<double>(tight(beta, 1.0)).gradient(net, x, y, gradient);
    const Matrix<double> expected = (a - y) * x.transpose() / (4 * (1 + beta));
    CHECK((net.layer(0).weights(gradient) - expected).norm() < 1e-10 * expected.norm());
  }
}

TEST_CASE("at finite beta the CHL gradient is the gradient of the surrogate L_beta itself",
          "[chl]") {
  // L_beta = [min_z clamped - min_z free] / c_{L+1}; the free minimum is 0 (forward pass), so
  // L_beta is the clamped minimum / c_{L+1}, here differentiated by central differences with
  // the inner problem solved tightly. No BP involved.
  random_source random(43);
  program<double, mse, tanh_pair, sigmoid> net({3, 4, 2}, {tanh_pair{}, sigmoid{}});
  randomize(net, random, 0.8);
  const Matrix<double> x = random_matrix<double>(random, 3, 3);
  const Matrix<double> y = random_matrix<double>(random, 2, 3, 0.3).array() + 0.5;
  const double beta = 0.7, gamma = 0.6;
  chl<double> method(tight(beta, gamma));
  Vector<double> gradient;
  method.gradient(net, x, y, gradient);
  const double loss_weight = gamma * beta;  // c_{L+1} = gamma^(L-1) beta with L = 2
  auto surrogate = [&](const decltype(net)& perturbed) {
    chl<double> inner(tight(beta, gamma));
    Vector<double> unused;
    return inner.gradient(perturbed, x, y, unused).inner_energy / loss_weight;
  };
  Vector<double> numeric(net.parameter_count());
  for (Index i = 0; i < net.parameter_count(); ++i) {
    auto plus = net, minus = net;
    plus.parameters()(i) += 1e-5;
    minus.parameters()(i) -= 1e-5;
    numeric(i) = (surrogate(plus) - surrogate(minus)) / 2e-5;
  }
  CHECK(relative_error(gradient, numeric) < 1e-6);
}

TEST_CASE("the clamped phase never increases the clamped energy and moves the output toward "
          "the target",
          "[chl]") {
  random_source random(44);
  auto net = make_mlp<double, relu, mse>({4, 6, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 5);
  const Matrix<double> y = random_matrix<double>(random, 3, 5);
  double previous = std::numeric_limits<double>::infinity();
  for (const Index sweeps : {1, 2, 4, 8, 16}) {
    auto s = tight(0.5, 1.0);
    s.max_sweeps = sweeps;
    s.block_iterations = 1;
    chl<double> method(s);
    Vector<double> gradient;
    const step_report report = method.gradient(net, x, y, gradient);
    CHECK(report.inner_energy <= previous + 1e-12);
    previous = report.inner_energy;
    forward_state<double> free;
    net.forward(x, free);
    const double free_distance = (free.z.back() - y).norm();
    CHECK((method.clamped_state().back() - y).norm() < free_distance);
  }
}

TEST_CASE("CHL rejects invalid settings", "[chl]") {
  chl<double>::settings s;
  s.beta = 0;
  CHECK_THROWS_WITH(chl<double>(s), Catch::Contains("chl") && Catch::Contains("beta"));
  s.beta = 1;
  s.gamma = -1;
  CHECK_THROWS_AS(chl<double>(s), config_error);
}
