// MAC (docs/methods.md §5.4, §5.6b): the Z-step never increases F and lowers it from the forward
// pass, its displacement form agrees with F evaluated directly on the coordinates, the W-step
// never increases any layer's objective, F is monotone over alternations at fixed mu; at the
// training spacing the estimate is the finite-difference gradient of V(theta) = mean_j min_z F^j;
// at defaults every layer's error to BP falls linearly with 1/mu down to the tolerance floor; the
// first-order start is O(1/mu^2) close; the report counts samples left at the cap; a few steps
// train a small problem.

#include <algorithm>
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "bilevel/activations/activations.hpp"
#include "bilevel/losses/mse.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/methods/mac.hpp"
#include "bilevel/optimizers/adam.hpp"
#include "bilevel/train/trainer.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

bool non_increasing(const std::vector<double>& values) {
  for (std::size_t t = 1; t < values.size(); ++t)
    if (values[t] > values[t - 1]) return false;
  return true;
}

/// Relative error of layer i's part (W and b) of `actual` against `expected`.
template <class Program>
double layer_error(const Program& net, Index i, const Vector<double>& actual,
                   const Vector<double>& expected) {
  const auto& layer = net.layer(i);
  const double difference = (layer.weights(actual) - layer.weights(expected)).squaredNorm() +
                            (layer.bias(actual) - layer.bias(expected)).squaredNorm();
  return std::sqrt(difference / (layer.weights(expected).squaredNorm() +
                                 layer.bias(expected).squaredNorm()));
}

mac<double>::settings tight(double mu) {
  mac<double>::settings config;
  config.mu = mu;
  config.z_stopping = {1e-11, 10000};
  return config;
}

}  // namespace

TEMPLATE_TEST_CASE("MAC Z-step never increases F and lowers it from the forward pass", "[mac]",
                   tanh_pair, relu, sigmoid, softmax) {
  random_source random(21);
  auto net = make_mlp<double, TestType>({5, 7, 6, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 9);
  const Matrix<double> y = random_one_hot<double>(random, 4, 9);

  mac<double>::settings config;
  config.mu = 3;
  mac<double> method(config);
  REQUIRE(method.config().start == inner_start::forward);
  const step_report report = method.solve_z(net, x, y);
  const auto& history = method.energy_history();

  // F at the forward pass is the loss (every penalty is 0 there).
  REQUIRE(history.size() >= 3);
  CHECK(history.front() == Approx(mean_loss(net, x, y)).epsilon(1e-14));
  CHECK(report.loss == Approx(history.front()).epsilon(1e-14));
  CHECK(non_increasing(history));
  CHECK(history.back() < history.front() - 1e-3);
  CHECK(report.inner_energy == history.back());
  CHECK(report.inner_iterations == Index(history.size()) - 1);
  CHECK(report.converged());
  // The Z-step works on displacements from the forward pass; F evaluated directly on the
  // coordinates it returns is the same.
  CHECK(method.energy(net, y) == Approx(history.back()).epsilon(1e-12));

  // Sample by sample as well: the stored coordinates give no sample a larger F than its loss.
  forward_state<double> state;
  net.forward(x, state);
  const RowVector<double> start = net.loss_values(state.z.back(), y);
  const RowVector<double> end = method.energies(net, y);
  CHECK((end.array() <= start.array()).all());
  CHECK((end.array() < start.array()).any());
}

TEST_CASE("MAC Z-step with MSE through a sigmoid output never increases F", "[mac]") {
  random_source random(22);
  program<double, mse, tanh_pair, relu, sigmoid> net({3, 6, 5, 2},
                                                      {tanh_pair{}, relu{}, sigmoid{}});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 7);
  const Matrix<double> y = random_matrix<double>(random, 2, 7, 0.5);
  mac<double>::settings config;
  config.mu = 0.5;
  mac<double> method(config);
  method.solve_z(net, x, y);
  CHECK(non_increasing(method.energy_history()));
  CHECK(method.energy_history().back() < method.energy_history().front());
  CHECK(method.energy(net, y) == Approx(method.energy_history().back()).epsilon(1e-12));
  // The stored output is f_L(a_L) of the stored hidden coordinates.
  const auto& z = method.state();
  Matrix<double> a;
  net.affine(2, z[2], a);
  const Matrix<double> expected = a.unaryExpr([](double v) { return 1 / (1 + std::exp(-v)); });
  CHECK((z[3] - expected).norm() < 1e-14);
}

TEST_CASE("MAC W-step lowers every layer's objective and so F at fixed mu", "[mac]") {
  random_source random(23);
  auto net = make_mlp<double, tanh_pair>({4, 8, 6, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 12);
  const Matrix<double> y = random_one_hot<double>(random, 3, 12);
  mac<double>::settings config;
  config.mu = 2;
  config.w_iterations = 4;
  mac<double> method(config);
  method.solve_z(net, x, y);

  std::vector<double> before;
  for (Index k = 0; k < net.depth(); ++k) before.push_back(method.layer_objective(net, k, y));
  const double energy_before = method.energy(net, y);
  method.w_step(net, y);
  double penalties = 0;
  for (Index k = 0; k < net.depth(); ++k) {
    const double after = method.layer_objective(net, k, y);
    CAPTURE(k, before[std::size_t(k)], after);
    CHECK(after < before[std::size_t(k)]);
    if (k + 1 < net.depth()) penalties += config.mu * after;
  }
  const double energy_after = method.energy(net, y);
  CHECK(energy_after < energy_before);
  // F is the top layer's objective plus mu times each hidden layer's (batch means).
  CHECK(energy_after ==
        Approx(penalties + method.layer_objective(net, net.depth() - 1, y)).epsilon(1e-12));
}

TEST_CASE("MAC alternations at fixed mu never increase F", "[mac]") {
  random_source random(24);
  auto net = make_mlp<double, relu>({4, 9, 7, 3});
  randomize(net, random, 0.5);
  const Matrix<double> x = random_matrix<double>(random, 4, 16);
  const Matrix<double> y = random_one_hot<double>(random, 3, 16);
  mac<double>::settings config;
  config.mu = 1;
  config.z_stopping.max_iterations = 10;
  config.w_iterations = 3;
  mac<double> method(config);
  method.solve_z(net, x, y);

  std::vector<double> energies{method.energy(net, y)};
  for (int round = 0; round < 6; ++round) {
    method.w_step(net, y);
    energies.push_back(method.energy(net, y));
    method.solve_z(net, x, y, mac<double>::z_start::previous);
    CHECK(non_increasing(method.energy_history()));
    energies.push_back(method.energy(net, y));
  }
  CAPTURE(energies);
  CHECK(non_increasing(energies));
  CHECK(energies.back() < 0.8 * energies.front());
  CHECK(method.mu() == 1);  // the building blocks never change mu
}

TEST_CASE("MAC at defaults: every layer's error to BP falls like 1/mu to the tolerance floor",
          "[mac]") {
  // A smooth net (no kinks) with distinct layer sizes: the error is C_k / mu per layer until
  // the tolerance leaves a floor of about tolerance times a constant (docs/methods.md §5.6b).
  random_source random(25);
  auto net = make_mlp<double, tanh_pair>({5, 8, 6, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 4, 7);
  Vector<double> reference;
  bp<double>{}.gradient(net, x, y, reference);

  const std::vector<double> mus = {10, 100, 1000, 1e4, 1e6};
  std::vector<std::vector<double>> errors(mus.size());
  for (std::size_t m = 0; m < mus.size(); ++m) {
    mac<double>::settings config;
    config.mu = mus[m];
    mac<double> method(config);
    Vector<double> estimate;
    const step_report report = method.gradient(net, x, y, estimate);
    CHECK(report.converged());
    CHECK(report.inner_iterations >= 2);
    // The Gauss-Newton step is Newton's up to O(1/mu): two steps and the rule's check suffice.
    if (mus[m] == 1000 || mus[m] == 1e4) CHECK(report.inner_iterations <= 3);
    for (Index i = 0; i < net.depth(); ++i) errors[m].push_back(layer_error(net, i, estimate, reference));
  }
  for (Index i = 0; i < net.depth(); ++i) {
    const auto k = std::size_t(i);
    CAPTURE(i, errors[0][k], errors[1][k], errors[2][k], errors[3][k], errors[4][k]);
    // First order in 1/mu: each decade takes one decade off every layer's error.
    for (std::size_t m = 1; m < 4; ++m) {
      CHECK(errors[m][k] < 0.12 * errors[m - 1][k]);
      CHECK(errors[m][k] > 0.08 * errors[m - 1][k]);
    }
    CHECK(errors[0][k] > 0.05);
    // Down to the floor: far below the default tolerance's scale.
    CHECK(errors[4][k] < 1e-4);
  }
}

TEST_CASE("MAC's estimate is a batch mean and the gradient of min_z F at mu = 10", "[mac]") {
  // At the spacing training uses (mu = 10, far from BP) the estimate must be the gradient of the
  // surrogate it claims to minimise, V(theta) = mean_j min_z F^j(z, theta) (envelope theorem),
  // with distinct layer sizes so that a shifted index shows.
  random_source random(26);
  auto net = make_mlp<double, tanh_pair>({3, 6, 5, 2});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 4);
  const Matrix<double> y = random_one_hot<double>(random, 2, 4);
  const mac<double>::settings config = tight(10);

  // A duplicated batch gives the same estimate.
  Matrix<double> x2(3, 8), y2(2, 8);
  x2 << x, x;
  y2 << y, y;
  Vector<double> once, twice, reference;
  mac<double>(config).gradient(net, x, y, once);
  mac<double>(config).gradient(net, x2, y2, twice);
  CHECK((once - twice).norm() < 1e-12 * once.norm());

  const auto value = [&](const auto& program) {
    mac<double> method(config);
    const step_report report = method.solve_z(program, x, y);
    CHECK(report.converged());
    return report.inner_energy;
  };
  Vector<double> numeric(net.parameter_count());
  for (Index i = 0; i < net.parameter_count(); ++i) {
    auto shifted = net;
    const double h = 1e-5;
    shifted.parameters()(i) += h;
    const double plus = value(shifted);
    shifted.parameters()(i) -= 2 * h;
    numeric(i) = (plus - value(shifted)) / (2 * h);
  }
  bp<double>{}.gradient(net, x, y, reference);
  for (Index i = 0; i < net.depth(); ++i) {
    CAPTURE(i);
    CHECK(layer_error(net, i, once, numeric) < 1e-7);
    // ... and that surrogate is far from BP's at this spacing.
    CHECK(layer_error(net, i, once, reference) > 1e-2);
  }
}

TEST_CASE("MAC's first-order start is O(1/mu^2) from the minimiser; the default is cold",
          "[mac]") {
  // F's excess over its minimum at a start e away is about mu/2 |e|^2: O(1/mu) for the forward
  // pass (e = O(1/mu)), O(1/mu^3) for the first-order start (e = O(1/mu^2)).
  random_source random(30);
  auto net = make_mlp<double, tanh_pair>({4, 7, 6, 5, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 6);
  const Matrix<double> y = random_one_hot<double>(random, 3, 6);
  std::vector<double> ratios;
  for (const double mu : {100.0, 1000.0}) {
    mac<double> method(tight(mu));
    const step_report cold = method.solve_z(net, x, y, mac<double>::z_start::forward);
    const double cold_excess = method.energy_history().front() - cold.inner_energy;
    const Vector<double> cold_state = method.state()[2].reshaped();
    const step_report warm = method.solve_z(net, x, y, mac<double>::z_start::first_order);
    const double warm_excess = method.energy_history().front() - warm.inner_energy;
    CHECK(warm.converged());
    CHECK((method.state()[2].reshaped() - cold_state).norm() < 1e-9 * cold_state.norm());
    CHECK(warm_excess >= 0);
    CHECK(cold_excess > 0);
    ratios.push_back(warm_excess / cold_excess);
  }
  CAPTURE(ratios);
  CHECK(ratios[0] < 1e-2);
  // O(1/mu^2): a decade of mu takes two decades off the ratio.
  CHECK(ratios[1] < 0.02 * ratios[0]);
  CHECK(mac<double>().config().start == inner_start::forward);
}

TEST_CASE("a sample's Z-step does not depend on its batch: the solve retires converged samples "
          "and keeps each one's own data",
          "[mac]") {
  mac<double>::settings s = tight(3);
  s.z_stopping.tolerance = 1e-9;
  const auto measured = batch_dependence<tanh_pair>(
      38, [&] { return mac<double>(s); }, [](const mac<double>& m) -> const auto& { return m.state(); });
  REQUIRE(measured.batch_converged);
  // The samples converge at different sweeps, so the batch's solve retires them in turn.
  CHECK(measured.fewest_sweeps < measured.most_sweeps);
  CHECK(measured.largest < 1e-6);
}

TEST_CASE("MAC's report counts the samples left at the cap", "[mac]") {
  random_source random(31);
  auto net = make_mlp<double, relu>({4, 7, 5, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 9);
  const Matrix<double> y = random_one_hot<double>(random, 3, 9);
  mac<double>::settings config;
  config.mu = 10;
  // The rule needs two steps to see a ratio: after one, every moving sample is unconverged.
  config.z_stopping.max_iterations = 1;
  const step_report capped = mac<double>(config).solve_z(net, x, y);
  CHECK(capped.inner_iterations == 1);
  CHECK(capped.unconverged == 9);
  CHECK_FALSE(capped.converged());
  config.z_stopping.max_iterations = 1000;
  const step_report free = mac<double>(config).solve_z(net, x, y);
  CHECK(free.unconverged == 0);
  CHECK(free.converged());
  CHECK(free.inner_iterations >= 2);
  CHECK(free.inner_iterations < 1000);
}

TEST_CASE("MAC train steps reduce the loss of a separable problem", "[mac]") {
  random_source random(27);
  auto net = make_mlp<double, relu>({4, 16, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  Matrix<double> x, y;
  blobs(random, 120, 0.4, x, y);
  const double initial = mean_loss(net, x, y);

  mac<double>::settings config;
  config.mu = 1;
  config.mu_growth = 1.05;
  config.mu_max = 20;
  mac<double> method(config);
  step_report last;
  for (int step = 0; step < 40; ++step) {
    const Index begin = (step % 4) * 30;
    last = method.train_step(net, x.middleCols(begin, 30), y.middleCols(begin, 30));
  }
  const double final_loss = mean_loss(net, x, y);
  CAPTURE(initial, final_loss, last.loss);
  CHECK(final_loss < 0.25 * initial);
  CHECK(method.mu() == Approx(std::min(20.0, std::pow(1.05, 40))));
  forward_state<double> state;
  net.forward(x, state);
  CHECK(count_correct<double>(state.z.back(), y) >= 114);
}

TEST_CASE("MAC mu schedule and bad settings", "[mac]") {
  mac<double>::settings config;
  config.mu = 2;
  config.mu_growth = 3;
  config.mu_max = 40;
  mac<double> method(config);
  method.advance_mu();
  CHECK(method.mu() == 6);
  method.advance_mu();
  CHECK(method.mu() == 18);
  method.advance_mu();
  CHECK(method.mu() == 40);
  method.set_mu(0.5);
  CHECK(method.mu() == 0.5);
  CHECK_THROWS_AS(method.set_mu(0), config_error);

  const auto bad = [](auto change) {
    mac<double>::settings settings;
    change(settings);
    return settings;
  };
  using settings = mac<double>::settings;
  CHECK_THROWS_AS(mac<double>(bad([](settings& s) { s.mu = 0; })), config_error);
  CHECK_THROWS_AS(mac<double>(bad([](settings& s) { s.mu = -1; })), config_error);
  CHECK_THROWS_AS(mac<double>(bad([](settings& s) { s.mu_growth = 0.5; })), config_error);
  CHECK_THROWS_AS(mac<double>(bad([](settings& s) { s.mu_max = 0.1; })), config_error);
  CHECK_THROWS_WITH(mac<double>(bad([](settings& s) { s.z_stopping.max_iterations = 0; })),
                    Catch::Contains("mac") && Catch::Contains("max_iterations"));
  CHECK_THROWS_WITH(mac<double>(bad([](settings& s) { s.z_stopping.tolerance = 0; })),
                    Catch::Contains("mac") && Catch::Contains("tolerance"));
  CHECK_THROWS_AS(mac<double>(bad([](settings& s) { s.z_stopping.tolerance = 1; })), config_error);
  CHECK_THROWS_AS(mac<double>(bad([](settings& s) { s.w_step = -0.1; })), config_error);
  CHECK_THROWS_AS(mac<double>(bad([](settings& s) { s.armijo = 1; })), config_error);
  CHECK_THROWS_WITH(mac<double>(bad([](settings& s) { s.max_backtracks = 0; })),
                    Catch::Contains("mac") && Catch::Contains("max_backtracks"));

  // The building blocks need a Z-step on the same batch shape first.
  auto net = make_mlp<double, relu>({3, 4, 2});
  mac<double> fresh;
  const Matrix<double> x = Matrix<double>::Zero(3, 5), y = Matrix<double>::Zero(2, 5);
  CHECK_THROWS_AS(fresh.w_step(net, y), config_error);
  CHECK_THROWS_AS(fresh.solve_z(net, x, y, mac<double>::z_start::previous), config_error);
  CHECK_THROWS_AS(fresh.solve_z(net, x, Matrix<double>::Zero(3, 5)), shape_error);
}

TEST_CASE("MAC runs under the trainer, natively and by its gradient", "[mac]") {
  random_source random(28);
  Matrix<double> x, y;
  blobs(random, 90, 0.4, x, y);
  dataset<double> data{x, y};
  auto start = make_mlp<double, tanh_pair>({4, 8, 8, 3});
  start.initialize(init_scheme::glorot_uniform, random);
  const double initial = mean_loss(start, x, y);
  for (const step_mode mode : {step_mode::native, step_mode::gradient}) {
    auto net = start;
    mac<double> method;
    adam<double> optimizer({.learning_rate = 0.01}, net.parameter_count(), net.weight_count());
    trainer<decltype(net), mac<double>, adam<double>> loop(net, method, optimizer, 30, 3, mode);
    epoch_report report;
    for (int epoch = 0; epoch < 8; ++epoch) report = loop.run_epoch(data);
    const double final_loss = mean_loss(net, x, y);
    CAPTURE(int(mode), initial, final_loss);
    CHECK(final_loss < 0.3 * initial);
    CHECK(std::isfinite(report.inner_residual));
  }
}

TEST_CASE("MAC in float keeps its digits at a small spacing", "[mac]") {
  // At mu = 1e6 the coordinates move by about 1e-6 of their size: formed on z, float's rounding
  // would be the whole displacement; on d = z - z^0 the float estimate matches double's.
  random_source random(32);
  auto net = make_mlp<double, tanh_pair>({5, 8, 6, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 4, 7);
  auto single = make_mlp<float, tanh_pair>({5, 8, 6, 4});
  single.parameters() = net.parameters().cast<float>();
  Vector<double> reference;
  Vector<float> estimate;
  mac<double>({.mu = 1e6}).gradient(net, x, y, reference);
  const step_report report =
      mac<float>({.mu = 1e6f}).gradient(single, x.cast<float>(), y.cast<float>(), estimate);
  CHECK(report.converged());
  const Vector<double> widened = estimate.cast<double>();
  for (Index i = 0; i < net.depth(); ++i) {
    CAPTURE(i);
    CHECK(layer_error(net, i, widened, reference) < 1e-4);
  }
}

TEST_CASE("MAC in float: Armijo compares F evaluated over the same columns", "[mac]") {
  // After samples retire, the rest are evaluated over fewer columns, which rounds differently;
  // compared with F from before, a sample next to its minimiser refused every step until it was
  // stuck (measured: one sample in each of 2-5 of these 250 batches, by compiler flags).
  std::vector<std::uint64_t> unconverged_seeds;
  for (std::uint64_t seed = 1; seed <= 250; ++seed) {
    random_source random(seed);
    auto net = make_mlp<float, relu>({30, 40, 30, 20, 10});
    net.initialize(init_scheme::glorot_uniform, random);
    const Matrix<float> x = random_matrix<float>(random, 30, 50);
    const Matrix<float> y = random_one_hot<float>(random, 10, 50);
    Vector<float> gradient;
    if (!mac<float>().gradient(net, x, y, gradient).converged()) unconverged_seeds.push_back(seed);
  }
  CAPTURE(unconverged_seeds);
  CHECK(unconverged_seeds.empty());
}

TEST_CASE("MAC runs in float", "[mac]") {
  random_source random(29);
  auto net = make_mlp<float, relu>({4, 6, 5, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<float> x = random_matrix<float>(random, 4, 8);
  const Matrix<float> y = random_one_hot<float>(random, 3, 8);
  mac<float> method;
  const step_report report = method.train_step(net, x, y);
  Vector<float> gradient;
  method.gradient(net, x, y, gradient);
  CHECK(std::isfinite(report.inner_energy));
  CHECK(report.inner_energy <= report.loss);
  CHECK(net.parameters().allFinite());
  CHECK(gradient.allFinite());
}
