// CHL (docs/methods.md §5.3): the beta -> 0 limit to BP at fixed gamma, per layer and at the
// defaults, the §4 closed form at finite beta, finite differences of the surrogate L_beta
// itself, the clamped phase's solver and its stopping rule (§5.6b), in double and in float.

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>

#include "bilevel/activations/activations.hpp"
#include "bilevel/losses/mse.hpp"
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
  s.stopping = {1e-9, 20000};
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
      CHECK(report.converged());
      CHECK(report.inner_residual < 1e-10);
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

TEST_CASE("at its defaults CHL's every layer tends to BP linearly in beta, down to the "
          "tolerance floor",
          "[chl]") {
  // gamma != 1 and distinct widths, so that a slip in a layer's factor gamma^(L-k) or in an
  // index shows in that layer's error; a cosine alone would not see a factor.
  random_source random(45);
  auto net = make_mlp<double, tanh_pair>({5, 7, 6, 4, 3});
  randomize(net, random, 0.7);
  const Matrix<double> x = random_matrix<double>(random, 5, 8);
  const Matrix<double> y = random_one_hot<double>(random, 3, 8);
  Vector<double> reference, gradient;
  bp<double>{}.gradient(net, x, y, reference);
  std::vector<std::vector<double>> errors(4);
  for (const double beta : {1e-1, 1e-2, 1e-3}) {
    chl<double>::settings s;
    s.beta = beta;
    s.gamma = 0.7;
    chl<double> method(s);
    const step_report report = method.gradient(net, x, y, gradient);
    REQUIRE(report.converged());
    for (Index k = 0; k < 4; ++k) {
      const auto got = net.layer(k).weights(gradient), want = net.layer(k).weights(reference);
      errors[std::size_t(k)].push_back((got - want).norm() / want.norm());
    }
  }
  for (Index k = 0; k < 4; ++k) {
    const auto& e = errors[std::size_t(k)];
    INFO("layer " << k + 1 << ": " << e[0] << " " << e[1] << " " << e[2]);
    CHECK(e[1] < 0.2 * e[0]);  // linear in beta above the floor
    CHECK(e[2] < 5e-3);         // C beta + kappa tau at beta 1e-3, tau 1e-3
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
  // One layer: its weight is gamma^0 = 1 and the loss's gamma^0 beta, so gamma must not matter.
  for (const double gamma : {1.0, 0.5})
    for (const double beta : {0.1, 1.0, 5.0}) {
      Vector<double> gradient;
      chl<double>(tight(beta, gamma)).gradient(net, x, y, gradient);
      const Matrix<double> expected = (a - y) * x.transpose() / (4 * (1 + beta));
      CAPTURE(gamma, beta);
      // Up to the inner solve's tolerance, 1e-9 relative to the displacement.
      CHECK((net.layer(0).weights(gradient) - expected).norm() < 1e-9 * expected.norm());
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
    s.stopping.max_iterations = sweeps;
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

TEST_CASE("CHL's stopping rule: converged at the defaults, within its tolerance of a tight "
          "solve, and a capped solve says so",
          "[chl]") {
  random_source random(46);
  auto net = make_mlp<double, relu>({6, 9, 7, 3});
  randomize(net, random, 0.5);
  const Matrix<double> x = random_matrix<double>(random, 6, 10);
  const Matrix<double> y = random_one_hot<double>(random, 3, 10);
  Vector<double> tight_gradient, gradient;
  chl<double>(tight(0.01, 1.0)).gradient(net, x, y, tight_gradient);
  chl<double>::settings s;
  s.beta = 0.01;
  chl<double> method(s);
  const step_report report = method.gradient(net, x, y, gradient);
  CHECK(report.converged());
  CHECK(report.inner_iterations >= 2);
  CHECK(relative_error(gradient, tight_gradient) < 20 * s.stopping.tolerance);
  s.stopping.max_iterations = 2;
  const step_report capped = chl<double>(s).gradient(net, x, y, gradient);
  CHECK(capped.inner_iterations == 2);
  CHECK(capped.unconverged > 0);
  CHECK(!capped.converged());
}

TEST_CASE("a sample's clamped state does not depend on its batch: the solve retires converged "
          "samples and keeps each one's own data",
          "[chl]") {
  const chl<double>::settings s = tight(0.3, 1.0);
  const auto measured = batch_dependence<relu>(
      48, [&] { return chl<double>(s); },
      [](const chl<double>& m) -> const auto& { return m.clamped_state(); });
  REQUIRE(measured.batch_converged);
  // The samples converge at different sweeps, so the batch's solve retires them in turn.
  CHECK(measured.fewest_sweeps < measured.most_sweeps);
  CHECK(measured.largest < 1e-6);
}

TEST_CASE("CHL's first-order start converges to the same clamped state in fewer sweeps",
          "[chl]") {
  random_source random(47);
  auto net = make_mlp<double, tanh_pair>({5, 6, 4, 3});
  randomize(net, random, 0.6);
  const Matrix<double> x = random_matrix<double>(random, 5, 6);
  const Matrix<double> y = random_one_hot<double>(random, 3, 6);
  chl<double>::settings s = tight(1e-3, 0.8);
  s.stopping.tolerance = 1e-8;
  s.extrapolation = 0;  // the start's own effect, on plain sweeps
  chl<double> cold(s);
  s.start = inner_start::first_order;
  chl<double> warm(s);
  Vector<double> cold_gradient, warm_gradient;
  const step_report cold_report = cold.gradient(net, x, y, cold_gradient);
  const step_report warm_report = warm.gradient(net, x, y, warm_gradient);
  CHECK(cold_report.converged());
  CHECK(warm_report.converged());
  CHECK(warm_report.inner_iterations < cold_report.inner_iterations);
  CHECK(relative_error(warm_gradient, cold_gradient) < 1e-5);
}

TEST_CASE("CHL's extrapolated sweeps reach the plain sweeps' clamped state in fewer sweeps, and "
          "the clamped energy never increases from one sweep to the next",
          "[chl]") {
  // A chain of six blocks, where plain block coordinate descent zig-zags (docs/methods.md §5.6b).
  random_source random(49);
  auto net = make_mlp<double, relu>({5, 8, 8, 8, 8, 8, 3});
  randomize(net, random, 0.9);
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 3, 7);
  chl<double>::settings s = tight(0.1, 1.0);
  s.extrapolation = 0;
  chl<double> plain(s);
  s.extrapolation = 0.95;
  chl<double> accelerated(s);
  Vector<double> plain_gradient, accelerated_gradient;
  const step_report plain_report = plain.gradient(net, x, y, plain_gradient);
  const step_report accelerated_report = accelerated.gradient(net, x, y, accelerated_gradient);
  REQUIRE(plain_report.converged());
  REQUIRE(accelerated_report.converged());
  CAPTURE(plain_report.inner_iterations, accelerated_report.inner_iterations);
  CHECK(2 * accelerated_report.inner_iterations < plain_report.inner_iterations);
  CHECK(relative_error(accelerated_gradient, plain_gradient) < 1e-6);
  double previous = std::numeric_limits<double>::infinity();
  for (Index sweeps = 1; sweeps <= 30; ++sweeps) {
    s.stopping.max_iterations = sweeps;
    chl<double> capped(s);
    const step_report report = capped.gradient(net, x, y, accelerated_gradient);
    CAPTURE(sweeps);
    CHECK(report.inner_energy <= previous + 1e-12);
    previous = report.inner_energy;
  }
}

TEST_CASE("CHL in float keeps its digits at small beta: it iterates on z - z^0", "[chl]") {
  // Forming f(a) - z from z itself would cancel about u ||z|| / ||z^beta - z^0|| of the
  // signal, 1e-4 relative at beta 1e-3 here; on the displacement the float estimate stays
  // within the stopping rule's floor of the double one.
  random_source random(48);
  auto net = make_mlp<double, relu>({6, 9, 7, 3});
  randomize(net, random, 0.5);
  auto net_float = make_mlp<float, relu>({6, 9, 7, 3});
  net_float.parameters() = net.parameters().cast<float>();
  const Matrix<double> x = random_matrix<double>(random, 6, 10).cwiseAbs();
  const Matrix<double> y = random_one_hot<double>(random, 3, 10);
  for (const double beta : {1e-2, 1e-3}) {
    chl<double>::settings s;
    s.beta = beta;
    Vector<double> reference;
    chl<double>(s).gradient(net, x, y, reference);
    chl<float>::settings f;
    f.beta = float(beta);
    Vector<float> gradient;
    const step_report report =
        chl<float>(f).gradient(net_float, x.cast<float>(), y.cast<float>(), gradient);
    CHECK(report.converged());
    INFO("beta " << beta);
    CHECK(relative_error(gradient.cast<double>(), reference) < 2e-3);
  }
}

TEST_CASE("CHL rejects invalid settings", "[chl]") {
  chl<double>::settings s;
  s.beta = 0;
  CHECK_THROWS_WITH(chl<double>(s), Catch::Contains("chl") && Catch::Contains("beta"));
  s.beta = 1;
  s.gamma = -1;
  CHECK_THROWS_AS(chl<double>(s), config_error);
  s.gamma = 1;
  s.stopping.tolerance = 0;
  CHECK_THROWS_WITH(chl<double>(s), Catch::Contains("chl") && Catch::Contains("tolerance"));
  s.stopping.tolerance = 1e-3;
  s.stopping.max_iterations = 0;
  CHECK_THROWS_WITH(chl<double>(s), Catch::Contains("max_iterations"));
  s.stopping.max_iterations = 10;
  s.extrapolation = 1;
  CHECK_THROWS_WITH(chl<double>(s), Catch::Contains("chl") && Catch::Contains("extrapolation"));
}
