// PCN and Z-IL (METHODS.md §5.4): Z-IL reproduces BP exactly through PCN's own inference and
// every other schedule does not; one inference step against its closed form; PCN tends to BP
// when the output error is weak relative to the layer errors; inference descends the energy.

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "bilevel/activations/activations.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/methods/pcn.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

static_assert(GradientMethod<pcn<double>, mlp<double, relu>>);
static_assert(GradientMethod<pcn<float>, mlp<float, tanh_pair>>);

/// beta * ||z - y||^2 / 2: a squared error whose weight sets how strongly the output pulls on
/// the hidden states during inference (Whittington & Bogacz's output precision 1 / Sigma_L).
struct weighted_mse {
  double weight = 1;
  std::string name() const { return "weighted_mse"; }
  template <class S>
  RowVector<S> value(const MatrixCRef<S>& z, const MatrixCRef<S>& y) const {
    return S(weight) * (z - y).colwise().squaredNorm() / S(2);
  }
  template <class S>
  void gradient(const MatrixCRef<S>& z, const MatrixCRef<S>& y, MatrixRef<S> g) const {
    g = S(weight) * (z - y);
  }
};

template <class Program>
Vector<double> bp_gradient(const Program& net, const Matrix<double>& x, const Matrix<double>& y) {
  Vector<double> gradient;
  bp<double>{}.gradient(net, x, y, gradient);
  return gradient;
}

pcn<double> make_pcn(Index iterations, double rate, bool zero_divergence = false) {
  pcn<double>::settings config;
  config.iterations = iterations;
  config.inference_rate = rate;
  config.zero_divergence = zero_divergence;
  return pcn<double>(config);
}

const std::vector<std::vector<Index>> depths = {{5, 4}, {5, 7, 4}, {5, 7, 6, 4}, {5, 6, 7, 5, 4}};

}  // namespace

TEMPLATE_TEST_CASE("Z-IL equals BP with softmax cross-entropy", "[pcn]", relu, leaky_relu,
                   tanh_pair, sigmoid, softmax) {
  random_source random(61);
  for (const auto& sizes : depths) {
    auto net = make_mlp<double, TestType>(sizes);
    randomize(net, random);
    const Matrix<double> x = random_matrix<double>(random, 5, 9);
    const Matrix<double> y = random_one_hot<double>(random, 4, 9);
    Vector<double> gradient;
    auto method = pcn<double>::zil();
    const step_report report = method.gradient(net, x, y, gradient);
    const double error = relative_error(gradient, bp_gradient(net, x, y));
    INFO("depth " << net.depth() << ", relative error " << error);
    CHECK(error < 1e-9);
    CHECK(method.name() == "zil");
    CHECK(report.inner_iterations == net.depth() - 1);
    CHECK(report.loss == Approx(mean_loss(net, x, y)).epsilon(1e-14));
  }
}

TEMPLATE_TEST_CASE("Z-IL equals BP with MSE through a non-identity output", "[pcn]", relu,
                   tanh_pair, sigmoid, hard_tanh) {
  random_source random(62);
  for (const auto& sizes : depths) {
    using net_type = program<double, mse, TestType>;
    net_type net(sizes, std::vector<typename net_type::pair_type>(sizes.size() - 1, TestType{}));
    randomize(net, random);
    const Matrix<double> x = random_matrix<double>(random, 5, 8);
    const Matrix<double> y = random_matrix<double>(random, 4, 8, 0.5);
    Vector<double> gradient;
    pcn<double>::zil().gradient(net, x, y, gradient);
    const double error = relative_error(gradient, bp_gradient(net, x, y));
    INFO("depth " << net.depth() << ", relative error " << error);
    CHECK(error < 1e-9);
  }
}

TEST_CASE("every other schedule of the same inference differs from BP", "[pcn]") {
  random_source random(63);
  auto net = make_mlp<double, tanh_pair>({5, 7, 6, 5, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 9);
  const Matrix<double> y = random_one_hot<double>(random, 4, 9);
  const Vector<double> reference = bp_gradient(net, x, y);
  const Index L = net.depth();
  Vector<double> gradient;

  // Z-IL's own rate and step count, but every layer read at the last step.
  const step_report last = make_pcn(L - 1, 1.0).gradient(net, x, y, gradient);
  CHECK(last.inner_iterations == L - 1);
  CHECK(relative_error(gradient, reference) > 1e-3);
  // The Z-IL schedule at another rate: only the output layer (read at t = 0) still agrees.
  auto half = make_pcn(50, 0.5, true);
  CHECK(half.name() == "zil");
  half.gradient(net, x, y, gradient);
  CHECK(relative_error(gradient, reference) > 1e-3);
  const auto& top = net.layer(L - 1);
  CHECK((top.weights(gradient) - top.weights(reference)).norm() <
        1e-12 * top.weights(reference).norm());
  // Plain PCN with the defaults of Whittington & Bogacz's code.
  pcn<double> plain;
  CHECK(plain.name() == "pcn");
  CHECK(plain.config().iterations == 50);
  CHECK(plain.config().inference_rate == 0.1);
  plain.gradient(net, x, y, gradient);
  CHECK(relative_error(gradient, reference) > 1e-3);
}

TEST_CASE("one PCN inference step against its closed form; batch means; buffer reuse",
          "[pcn]") {
  // Two layers, tanh hidden, identity output, MSE. From the forward pass (eps_1 = 0):
  //   z_1' = z_1 - r W_2^T g, g = z_2 - y;  eps_1 = z_1' - tanh(a_1) = -r W_2^T g;
  //   dW_1 = -(tanh'(a_1) .* eps_1) x^T / B;  dW_2 = g' z_1'^T / B with g' = W_2 z_1' + b_2 - y.
  random_source random(64);
  auto net = make_mlp<double, tanh_pair, mse>({3, 4, 2});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 5);
  const Matrix<double> y = random_matrix<double>(random, 2, 5);
  const double r = 0.3, B = 5;
  const Matrix<double> a1 = (net.weights(0) * x).colwise() + net.bias(0);
  const Matrix<double> z1 = a1.array().tanh().matrix();
  const Matrix<double> z2 = (net.weights(1) * z1).colwise() + net.bias(1);
  const Matrix<double> g = z2 - y;
  const Matrix<double> z1_new = z1 - r * net.weights(1).transpose() * g;
  const Matrix<double> eps1 = z1_new - z1;
  const Matrix<double> s1 = -((1 - z1.array().square()) * eps1.array()).matrix();
  const Matrix<double> g_new = ((net.weights(1) * z1_new).colwise() + net.bias(1)) - y;
  const Matrix<double> descent = eps1 + net.weights(1).transpose() * g_new;

  Vector<double> gradient;
  auto method = make_pcn(1, r);
  const step_report report = method.gradient(net, x, y, gradient);
  CHECK((net.layer(0).weights(gradient) - s1 * x.transpose() / B).norm() < 1e-12);
  CHECK((net.layer(0).bias(gradient) - s1.rowwise().sum() / B).norm() < 1e-12);
  CHECK((net.layer(1).weights(gradient) - g_new * z1_new.transpose() / B).norm() < 1e-12);
  CHECK((net.layer(1).bias(gradient) - g_new.rowwise().sum() / B).norm() < 1e-12);
  CHECK(report.loss == Approx(g.colwise().squaredNorm().mean() / 2).epsilon(1e-13));
  CHECK(report.correct == count_correct<double>(z2, y));
  CHECK(report.inner_iterations == 1);
  CHECK(report.inner_energy ==
        Approx((g_new.colwise().squaredNorm() + eps1.colwise().squaredNorm()).mean() / 2)
            .epsilon(1e-12));
  CHECK(report.inner_residual == Approx(descent.colwise().norm().mean()).epsilon(1e-12));
  CHECK((method.state()[1] - z1_new).norm() < 1e-14);

  // Batch means: a duplicated batch gives the same gradient and report; the buffers are resized
  // for it and again for the original batch.
  Matrix<double> x2(3, 10), y2(2, 10);
  x2 << x, x;
  y2 << y, y;
  Vector<double> twice, again;
  const step_report doubled = method.gradient(net, x2, y2, twice);
  method.gradient(net, x, y, again);
  CHECK((twice - gradient).norm() < 1e-14 * gradient.norm());
  CHECK((again - gradient).norm() == 0.0);
  CHECK(doubled.inner_energy == Approx(report.inner_energy).epsilon(1e-14));
  CHECK(doubled.correct == 2 * report.correct);
}

TEST_CASE("PCN tends to BP as the output error weakens relative to the layer errors", "[pcn]") {
  // With mu_k = 1 the equilibrium of inference is scale invariant at first order: shifting the
  // targets closer to the output shrinks the output error and every layer error alike, so the
  // relative error to BP tends to a nonzero constant. What makes PCN approach BP is a weak
  // output term (a small weight beta on the loss, Whittington & Bogacz's large output variance;
  // equivalently mu -> infinity, §5.4): then the hidden errors settle at BP's deltas times beta,
  // up to O(beta) relative, and BP on the same weighted loss is beta times BP.
  const auto relative_error_at = [](double weight, double offset) {
    random_source random(65);
    program<double, weighted_mse, tanh_pair> net({4, 6, 5, 3},
                                                 {tanh_pair{}, tanh_pair{}, tanh_pair{}},
                                                 weighted_mse{weight});
    randomize(net, random, 0.5);
    const Matrix<double> x = random_matrix<double>(random, 4, 8);
    forward_state<double> state;
    net.forward(x, state);
    const Matrix<double> y = state.z.back() + offset * random_matrix<double>(random, 3, 8);
    Vector<double> gradient;
    // Converged inference (residual ~1e-10 here): the remaining gap is the equilibrium's.
    const step_report report = make_pcn(2000, 0.05).gradient(net, x, y, gradient);
    CHECK(report.inner_residual < 1e-8 * offset * weight);
    return relative_error(gradient, bp_gradient(net, x, y));
  };

  std::vector<double> shifted, weighted;
  for (const double eps : {1e-1, 1e-2, 1e-3}) {
    shifted.push_back(relative_error_at(1.0, eps));
    weighted.push_back(relative_error_at(eps, 1.0));
  }
  INFO("targets shifted by eps: " << shifted[0] << " " << shifted[1] << " " << shifted[2]);
  INFO("loss weighted by eps:   " << weighted[0] << " " << weighted[1] << " " << weighted[2]);
  CHECK(shifted[2] > 0.1);
  CHECK(shifted[2] == Approx(shifted[1]).epsilon(0.1));
  // First order in beta: each decade of beta takes one decade off the error.
  CHECK(weighted[1] < 0.2 * weighted[0]);
  CHECK(weighted[2] < 0.2 * weighted[1]);
  CHECK(weighted[2] < 3e-2);
}

TEST_CASE("PCN inference never increases the energy and drives its gradient to zero",
          "[pcn]") {
  random_source random(66);
  auto net = make_mlp<double, tanh_pair>({5, 8, 7, 6, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 10);
  const Matrix<double> y = random_one_hot<double>(random, 4, 10);
  Vector<double> gradient;
  std::vector<double> energy, residual;
  for (Index t = 0; t <= 30; ++t) {
    const step_report report = make_pcn(t, 0.1).gradient(net, x, y, gradient);
    energy.push_back(report.inner_energy);
    residual.push_back(report.inner_residual);
  }
  // At t = 0 the state is the forward pass: every layer error is 0, F is the loss.
  CHECK(energy[0] == Approx(mean_loss(net, x, y)).epsilon(1e-14));
  for (std::size_t t = 1; t < energy.size(); ++t) {
    INFO("step " << t << ": F " << energy[t - 1] << " -> " << energy[t]);
    CHECK(energy[t] <= energy[t - 1]);
  }
  CHECK(energy.back() < 0.5 * energy.front());
  CHECK(residual.back() < 0.2 * residual.front());
  // Run long enough, inference reaches a stationary point of F.
  const step_report settled = make_pcn(5000, 0.1).gradient(net, x, y, gradient);
  INFO("residual " << residual.front() << " at t = 0, " << residual.back() << " at t = 30, "
                   << settled.inner_residual << " at t = 5000");
  CHECK(settled.inner_residual < 1e-8);
  CHECK(settled.inner_energy <= energy.back());
}

TEST_CASE("PCN rejects bad settings and batches of the wrong shape", "[pcn]") {
  CHECK_THROWS_AS(make_pcn(-1, 0.1), config_error);
  CHECK_THROWS_AS(make_pcn(10, 0.0), config_error);
  CHECK_THROWS_AS(make_pcn(10, std::numeric_limits<double>::quiet_NaN()), config_error);
  CHECK_THROWS_WITH(make_pcn(10, -0.5), Catch::Contains("pcn") &&
                                            Catch::Contains("inference_rate") &&
                                            Catch::Contains("-0.5"));
  CHECK_THROWS_WITH(make_pcn(-3, 0.1), Catch::Contains("iterations") && Catch::Contains("-3"));
  CHECK_NOTHROW(make_pcn(0, 1.0));

  auto net = make_mlp<double, relu>({3, 4, 2});
  Vector<double> gradient;
  pcn<double> method;
  CHECK_THROWS_AS(method.gradient(net, Matrix<double>::Zero(3, 5), Matrix<double>::Zero(3, 5),
                                  gradient),
                  shape_error);
  CHECK_THROWS_WITH(method.gradient(net, Matrix<double>::Zero(4, 5), Matrix<double>::Zero(2, 5),
                                    gradient),
                    Catch::Contains("pcn::gradient") && Catch::Contains("3x5") &&
                        Catch::Contains("4x5"));
  CHECK_THROWS_AS(method.gradient(net, Matrix<double>::Zero(3, 0), Matrix<double>::Zero(2, 0),
                                  gradient),
                  config_error);
}
