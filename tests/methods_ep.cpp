// Equilibrium propagation (METHODS.md §5.3): the free phase is a projected gradient descent of the
// Hopfield energy that reaches a fixed point, the nudged phase moves the output toward the target,
// and the EP estimate tends to the gradient of the cost at the free fixed point as beta -> 0,
// one-sided with error O(beta) and symmetric with error O(beta^2).

#include <catch2/catch.hpp>

#include <Eigen/Eigenvalues>
#include <cmath>
#include <vector>

#include "bilevel/activations/hard_sigmoid.hpp"
#include "bilevel/methods/ep.hpp"
#include "bilevel/optimizers/sgd.hpp"
#include "bilevel/train/trainer.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

using net_type = program<double, mse, hard_sigmoid>;
using ep_settings = ep<double>::settings;
using cost_type = ep<double>::cost_type;

static_assert(GradientMethod<ep<double>, net_type>);
static_assert(PredictingMethod<ep<double>, net_type>);

net_type make_net(const std::vector<Index>& sizes) {
  return net_type(sizes, std::vector<net_type::pair_type>(sizes.size() - 1, hard_sigmoid{}));
}

Matrix<double> uniform_matrix(random_source& random, Index rows, Index cols) {
  Matrix<double> m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) m(i, j) = random.uniform();
  return m;
}

/// Weights scale * N(0, 1), biases center + spread * N(0, 1).
void fill(net_type& net, random_source& random, double scale, double center, double spread) {
  for (Index k = 0; k < net.depth(); ++k) {
    auto w = net.weights(k);
    for (Index j = 0; j < w.cols(); ++j)
      for (Index i = 0; i < w.rows(); ++i) w(i, j) = scale * random.normal();
    auto b = net.bias(k);
    for (Index i = 0; i < b.size(); ++i) b(i) = center + spread * random.normal();
  }
}

/// The symmetric coupling M of the hidden and output units (blocks W_k and W_k^T).
Matrix<double> coupling(const net_type& net) {
  std::vector<Index> offset{0};
  for (Index k = 0; k < net.depth(); ++k) offset.push_back(offset.back() + net.layer(k).outputs());
  Matrix<double> m = Matrix<double>::Zero(offset.back(), offset.back());
  for (Index k = 1; k < net.depth(); ++k) {
    const auto w = net.weights(k);
    const auto i = std::size_t(k);
    m.block(offset[i], offset[i - 1], w.rows(), w.cols()) = w;
    m.block(offset[i - 1], offset[i], w.cols(), w.rows()) = w.transpose();
  }
  return m;
}

double spectral_norm(const Matrix<double>& symmetric) {
  return Eigen::SelfAdjointEigenSolver<Matrix<double>>(symmetric).eigenvalues().cwiseAbs().maxCoeff();
}

/// The states stacked into one column per sample.
Matrix<double> stacked(const std::vector<Matrix<double>>& s) {
  Index rows = 0;
  for (const auto& layer : s) rows += layer.rows();
  Matrix<double> out(rows, s.front().cols());
  Index offset = 0;
  for (const auto& layer : s) {
    out.middleRows(offset, layer.rows()) = layer;
    offset += layer.rows();
  }
  return out;
}

/// Smallest distance of any unit of any state to the ends of [0, 1].
double margin(const std::vector<Matrix<double>>& s) {
  double out = 1;
  for (const auto& layer : s)
    out = std::min(out, std::min(layer.minCoeff(), 1 - layer.maxCoeff()));
  return out;
}

/// Relaxed to machine precision (the contraction factor is well below 1 on these nets).
ep_settings precise(double beta, bool symmetric, cost_type cost) {
  ep_settings config;
  config.beta = beta;
  config.symmetric = symmetric;
  config.cost = cost;
  config.free_iterations = 600;
  config.nudged_iterations = 600;
  return config;
}

/// Batch-mean cost C(s_L*(theta), y) at the free fixed point.
double fixed_point_cost(const net_type& net, const Matrix<double>& x, const Matrix<double>& y,
                        cost_type cost) {
  ep<double> method(precise(0.1, true, cost));
  Matrix<double> output;
  method.predict(net, x, output);
  return double(method.cost_values(output, y).mean());
}

/// Central finite differences of fixed_point_cost in every parameter.
Vector<double> fixed_point_gradient(net_type net, const Matrix<double>& x, const Matrix<double>& y,
                                    cost_type cost, double step = 1e-6) {
  Vector<double> gradient(net.parameter_count());
  for (Index i = 0; i < net.parameter_count(); ++i) {
    const double saved = net.parameters()(i);
    net.parameters()(i) = saved + step;
    const double plus = fixed_point_cost(net, x, y, cost);
    net.parameters()(i) = saved - step;
    const double minus = fixed_point_cost(net, x, y, cost);
    net.parameters()(i) = saved;
    gradient(i) = (plus - minus) / (2 * step);
  }
  return gradient;
}

}  // namespace

TEST_CASE("EP free phase: the energy never increases and a fixed point is reached", "[ep]") {
  // (weight scale, step): energy descent of the projected flow needs step < 2 / (1 + ||M||).
  const std::vector<std::pair<double, double>> cases{{0.4, 0.5}, {0.15, 1.0}};
  for (const auto& [scale, step] : cases) {
    random_source random(21);
    net_type net = make_net({5, 8, 3});
    fill(net, random, scale, 0.0, 0.5);
    const double norm = spectral_norm(coupling(net));
    CAPTURE(scale, step, norm);
    REQUIRE(step < 2 / (1 + norm));
    const Matrix<double> x = uniform_matrix(random, 5, 6);
    const Matrix<double> y = random_one_hot<double>(random, 3, 6);

    // Iteration t = 0 is the start s = 0, where E = 0 for every sample.
    RowVector<double> previous = RowVector<double>::Zero(6);
    Matrix<double> output;
    const Index T = 40;
    for (Index t = 1; t <= T; ++t) {
      ep_settings config;
      config.step = step;
      config.free_iterations = t;
      ep<double> method(config);
      method.predict(net, x, output);
      const RowVector<double> energy = ep<double>::energy(net, x, method.free_state());
      CAPTURE(t);
      CHECK((energy.array() <= previous.array() + 1e-12).all());
      CHECK(margin(method.free_state()) >= 0);  // projected onto [0, 1]
      previous = energy;
    }

    ep_settings config;
    config.step = step;
    config.free_iterations = 300;
    ep<double> method(config);
    Vector<double> gradient;
    const step_report report = method.gradient(net, x, y, gradient);
    CHECK(report.inner_iterations == 300);
    CHECK(report.inner_residual < 1e-8);
    CHECK(report.inner_energy ==
          Approx(ep<double>::energy(net, x, method.free_state()).mean()).epsilon(1e-12));
    CHECK(report.inner_energy <= previous.mean() + 1e-12);

    // The fixed-point equation s = clip(s - step dE/ds, 0, 1), written out independently.
    const auto& s = method.free_state();
    const Index L = net.depth();
    for (Index k = 0; k < L; ++k) {
      const auto i = std::size_t(k);
      Matrix<double> drive = net.weights(k) * (k == 0 ? x : s[i - 1]);
      drive.colwise() += net.bias(k);
      if (k + 1 < L) drive += net.weights(k + 1).transpose() * s[i + 1];
      const Matrix<double> image = (s[i] - step * (s[i] - drive)).cwiseMax(0.0).cwiseMin(1.0);
      CHECK((image - s[i]).cwiseAbs().maxCoeff() < 1e-8);
    }
  }
}

TEST_CASE("EP free fixed point in the interior solves (I - M) s = c; the energy formula",
          "[ep]") {
  random_source random(22);
  net_type net = make_net({4, 5, 4, 3});
  fill(net, random, 0.07, 0.5, 0.05);
  const Matrix<double> x = uniform_matrix(random, 4, 5);
  ep<double> method(precise(0.1, true, ep_settings::cost::mse));
  Matrix<double> output;
  method.predict(net, x, output);
  REQUIRE(margin(method.free_state()) > 0.05);
  CHECK(output == method.free_state().back());
  CHECK(method.last_free_residual() < 1e-14);

  // c stacks W_1 x + b_1, b_2, ..., b_L.
  const Matrix<double> m = coupling(net);
  Matrix<double> c(m.rows(), x.cols());
  Index offset = 0;
  for (Index k = 0; k < net.depth(); ++k) {
    const Index n = net.layer(k).outputs();
    auto block = c.middleRows(offset, n);
    block.setZero();
    if (k == 0) block = net.weights(0) * x;
    block.colwise() += net.bias(k);
    offset += n;
  }
  const Matrix<double> identity = Matrix<double>::Identity(m.rows(), m.cols());
  const Matrix<double> expected = (identity - m).partialPivLu().solve(c);
  CHECK((stacked(method.free_state()) - expected).cwiseAbs().maxCoeff() < 1e-12);

  // The energy, here the quadratic 1/2 s^T (I - M) s - c^T s, and for states outside [0, 1]
  // 1/2 ||s||^2 with rho(s) = clip(s, 0, 1) in the other terms.
  const Matrix<double> s = stacked(method.free_state());
  const RowVector<double> quadratic =
      (s.cwiseProduct((identity - m) * s) / 2 - s.cwiseProduct(c)).colwise().sum();
  CHECK((ep<double>::energy(net, x, method.free_state()) - quadratic).cwiseAbs().maxCoeff() <
        1e-12);
  std::vector<Matrix<double>> wide = method.free_state();
  for (auto& layer : wide) layer = (2 * layer.array() - 0.5).matrix();  // partly outside
  const Matrix<double> raw = stacked(wide), clipped = raw.cwiseMax(0.0).cwiseMin(1.0);
  const RowVector<double> expected_energy =
      (raw.cwiseAbs2() / 2 - clipped.cwiseProduct(m * clipped) / 2 - clipped.cwiseProduct(c))
          .colwise()
          .sum();
  CHECK((ep<double>::energy(net, x, wide) - expected_energy).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("EP nudged phase moves the output toward the target", "[ep]") {
  for (const auto cost : {ep_settings::cost::mse, ep_settings::cost::cross_entropy}) {
    random_source random(23);
    net_type net = make_net({5, 8, 3});
    fill(net, random, 0.4, 0.0, 0.5);
    const Matrix<double> x = uniform_matrix(random, 5, 10);
    const Matrix<double> y = random_one_hot<double>(random, 3, 10);
    ep_settings config;
    config.cost = cost;
    config.free_iterations = 200;
    ep<double> method(config);
    Vector<double> gradient;
    const step_report report = method.gradient(net, x, y, gradient);
    CAPTURE(int(cost));
    const RowVector<double> free = method.cost_values(method.free_state().back(), y);
    const RowVector<double> nudged = method.cost_values(method.nudged_state().back(), y);
    const RowVector<double> mirrored = method.cost_values(method.mirrored_state().back(), y);
    CHECK(report.loss == Approx(free.mean()).epsilon(1e-14));
    CHECK(nudged.mean() < free.mean());
    CHECK(mirrored.mean() > free.mean());
    CHECK((nudged.array() <= free.array() + 1e-12).all());
  }
}

TEST_CASE("EP gradient tends to the gradient of the cost at the fixed point as beta -> 0",
          "[ep]") {
  for (const auto cost : {ep_settings::cost::mse, ep_settings::cost::cross_entropy}) {
    random_source random(24);
    net_type net = make_net({4, 5, 4, 3});
    fill(net, random, 0.07, 0.5, 0.05);
    const Matrix<double> x = uniform_matrix(random, 4, 5);
    const Matrix<double> y = random_one_hot<double>(random, 3, 5);
    const Vector<double> reference = fixed_point_gradient(net, x, y, cost);

    const std::vector<double> betas{0.2, 0.1, 0.05, 0.025, 0.0125};
    std::vector<double> one_sided, symmetric;
    for (const double beta : betas) {
      for (const bool sym : {false, true}) {
        ep<double> method(precise(beta, sym, cost));
        Vector<double> gradient;
        method.gradient(net, x, y, gradient);
        // Every unit stays off the kinks of rho, where C(s*(theta)) is smooth.
        REQUIRE(margin(method.free_state()) > 0.05);
        REQUIRE(margin(method.nudged_state()) > 0.05);
        if (sym) REQUIRE(margin(method.mirrored_state()) > 0.05);
        (sym ? symmetric : one_sided).push_back(relative_error(gradient, reference));
      }
    }
    for (std::size_t i = 0; i < betas.size(); ++i) {
      CAPTURE(int(cost), betas[i], one_sided[i], symmetric[i]);
      CHECK(symmetric[i] < one_sided[i]);
      // Slopes of log error against log beta over each halving, from beta = 0.1 down (at 0.2
      // the higher-order terms still show: measured one-sided slopes 0.86 and 0.96 there).
      if (i >= 2) {
        const double one_sided_slope = std::log(one_sided[i - 1] / one_sided[i]) / std::log(2.0);
        const double symmetric_slope = std::log(symmetric[i - 1] / symmetric[i]) / std::log(2.0);
        CAPTURE(one_sided_slope, symmetric_slope);
        CHECK(one_sided_slope == Approx(1).margin(0.1));
        CHECK(symmetric_slope == Approx(2).margin(0.1));
      }
    }
    CHECK(one_sided.back() < 0.05);
    CHECK(symmetric.back() < 1e-3);
  }
}

TEST_CASE("EP random sign: one-sided estimates with both signs average to the symmetric one",
          "[ep]") {
  random_source random(25);
  net_type net = make_net({4, 6, 3});
  fill(net, random, 0.3, 0.3, 0.3);
  const Matrix<double> x = uniform_matrix(random, 4, 7);
  const Matrix<double> y = random_one_hot<double>(random, 3, 7);
  ep_settings config = precise(0.05, false, ep_settings::cost::mse);
  config.random_sign = true;
  config.seed = 7;
  ep<double> method(config), twin(config);
  Vector<double> positive, negative, gradient, other;
  std::vector<double> signs;
  for (int call = 0; call < 24; ++call) {
    method.gradient(net, x, y, gradient);
    twin.gradient(net, x, y, other);
    CHECK(twin.last_beta() == method.last_beta());  // the same seed draws the same signs
    CHECK(std::abs(method.last_beta()) == 0.05);
    (method.last_beta() > 0 ? positive : negative) = gradient;
    signs.push_back(method.last_beta());
  }
  REQUIRE(positive.size() > 0);
  REQUIRE(negative.size() > 0);
  config.symmetric = true;
  ep<double> symmetric(config);
  symmetric.gradient(net, x, y, gradient);
  CHECK(relative_error((positive + negative) / 2, gradient) < 1e-9);
  CHECK(relative_error(positive, negative) > 1e-4);  // the two signs differ at O(beta)
}

TEST_CASE("EP report, prediction and batch means on the paper's 784-500-10 net", "[ep]") {
  random_source random(26);
  net_type net = make_net({784, 500, 10});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = uniform_matrix(random, 784, 20);
  const Matrix<double> y = random_one_hot<double>(random, 10, 20);
  ep<double> method;
  CHECK(method.name() == "ep");
  Vector<double> gradient;
  const step_report report = method.gradient(net, x, y, gradient);
  CHECK(gradient.size() == net.parameter_count());
  CHECK(gradient.allFinite());
  CHECK(gradient.norm() > 0);
  CHECK(report.inner_iterations == 20);
  CHECK(std::isfinite(report.inner_residual));
  Matrix<double> output;
  method.predict(net, x, output);
  REQUIRE(output.rows() == 10);
  REQUIRE(output.cols() == 20);
  CHECK(report.loss == Approx(method.cost_values(output, y).mean()).epsilon(1e-12));
  CHECK(report.correct == count_correct<double>(output, y));
  CHECK(report.inner_energy ==
        Approx(ep<double>::energy(net, x, method.free_state()).mean()).epsilon(1e-12));

  // A duplicated batch gives the same (batch-mean) gradient and loss.
  Matrix<double> x2(784, 40), y2(10, 40);
  x2 << x, x;
  y2 << y, y;
  Vector<double> twice;
  const step_report second = method.gradient(net, x2, y2, twice);
  CHECK(relative_error(twice, gradient) < 1e-13);
  CHECK(second.loss == Approx(report.loss).epsilon(1e-13));
  CHECK(second.correct == 2 * report.correct);

  const ep_settings paper = ep<double>::paper_settings(3);
  CHECK(paper.free_iterations == 500);
  CHECK(paper.nudged_iterations == 8);
  CHECK((paper.random_sign && !paper.symmetric && paper.beta == 1.0));
  CHECK(ep<double>::paper_settings(1).beta == 0.5);
}

TEST_CASE("EP trains a small classifier with the trainer and predicts by relaxation", "[ep]") {
  // Two classes split by the sign of x_0 - x_1, inputs in [0, 1].
  random_source random(27);
  const Index n = 200;
  Matrix<double> inputs = uniform_matrix(random, 4, n);
  std::vector<int> labels(static_cast<std::size_t>(n));
  for (Index j = 0; j < n; ++j) labels[std::size_t(j)] = inputs(0, j) > inputs(1, j) ? 1 : 0;
  const dataset<double> set = make_dataset<double>(inputs, labels, 2);

  net_type net = make_net({4, 12, 2});
  net.initialize(init_scheme::glorot_uniform, random);
  ep_settings config;
  config.free_iterations = 30;
  ep<double> method(config);
  sgd<double> optimizer({0.2}, net.parameter_count(), net.weight_count());
  trainer<net_type, ep<double>, sgd<double>> train(net, method, optimizer, 10, 3);
  const double error_before = classification_error(net, set, method);
  const epoch_report first = train.run_epoch(set);
  epoch_report last = first;
  for (int epoch = 1; epoch < 30; ++epoch) last = train.run_epoch(set);
  const double error_after = classification_error(net, set, method);
  CAPTURE(error_before, error_after, first.loss, last.loss);
  CHECK(last.loss < 0.7 * first.loss);
  CHECK(error_after < 0.1);
}

TEST_CASE("EP rejects bad settings and shapes", "[ep]") {
  const auto with = [](auto change) {
    ep_settings config;
    change(config);
    return config;
  };
  CHECK_THROWS_AS(ep<double>(with([](ep_settings& c) { c.beta = 0; })), config_error);
  CHECK_THROWS_AS(ep<double>(with([](ep_settings& c) { c.beta = -0.5; })), config_error);
  CHECK_THROWS_AS(ep<double>(with([](ep_settings& c) { c.beta = std::nan(""); })), config_error);
  CHECK_THROWS_AS(ep<double>(with([](ep_settings& c) { c.free_iterations = 0; })), config_error);
  CHECK_THROWS_AS(ep<double>(with([](ep_settings& c) { c.nudged_iterations = 0; })),
                  config_error);
  CHECK_THROWS_WITH(ep<double>(with([](ep_settings& c) { c.step = 0; })),
                    Catch::Contains("ep") && Catch::Contains("step"));
  CHECK_THROWS_AS(ep<double>::paper_settings(4), config_error);

  net_type net = make_net({3, 4, 2});
  ep<double> method;
  Vector<double> gradient;
  Matrix<double> output;
  CHECK_THROWS_AS(method.gradient(net, Matrix<double>::Zero(3, 5), Matrix<double>::Zero(3, 5),
                                  gradient),
                  shape_error);
  CHECK_THROWS_WITH(method.gradient(net, Matrix<double>::Zero(4, 5), Matrix<double>::Zero(2, 5),
                                    gradient),
                    Catch::Contains("ep::gradient") && Catch::Contains("3x5") &&
                        Catch::Contains("4x5"));
  CHECK_THROWS_AS(method.predict(net, Matrix<double>::Zero(2, 5), output), shape_error);
  CHECK_THROWS_AS(ep<double>::energy(net, Matrix<double>::Zero(3, 5),
                                     {Matrix<double>::Zero(4, 5)}),
                  config_error);
  CHECK_THROWS_AS(ep<double>::energy(net, Matrix<double>::Zero(3, 5),
                                     {Matrix<double>::Zero(4, 5), Matrix<double>::Zero(2, 4)}),
                  shape_error);
}
