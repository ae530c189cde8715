// Online AltMin (METHODS.md §5.6): code updates lower their objectives, the objectives are the
// stated per-sample sums, weight updates lower their local losses, a small problem trains, and
// with a large mu and tiny code steps the codes stay at the forward pass.

#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "bilevel/activations/activations.hpp"
#include "bilevel/methods/altmin.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/optimizers/sgd.hpp"
#include "bilevel/train/trainer.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

TEMPLATE_TEST_CASE("AltMin code updates lower every code's objective", "[altmin]", tanh_pair,
                   relu, sigmoid, softmax) {
  random_source random(31);
  auto net = make_mlp<double, TestType>({5, 7, 6, 6, 4});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 10);
  const Matrix<double> y = random_one_hot<double>(random, 4, 10);
  altmin<double> method;
  method.update_codes(net, x, y);
  for (Index k = 0; k + 1 < net.depth(); ++k) {
    const RowVector<double>& before = method.initial_code_objective(k);
    const RowVector<double>& after = method.code_objective(k);
    CAPTURE(k, before.mean(), after.mean());
    CHECK((after.array() <= before.array()).all());
    CHECK(after.mean() < before.mean());
  }
}

TEST_CASE("AltMin code objectives are the stated per-sample sums", "[altmin]") {
  random_source random(32);
  auto net = make_mlp<double, tanh_pair>({4, 6, 5, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 8);
  const Matrix<double> y = random_one_hot<double>(random, 3, 8);
  altmin<double>::settings config;
  config.mu = 0.05;
  altmin<double> method(config);
  const step_report report = method.update_codes(net, x, y);
  forward_state<double> forward;
  net.forward(x, forward);
  CHECK(report.loss == Approx(mean_loss(net, x, y)).epsilon(1e-14));

  const auto& c = method.codes();
  const auto f = [](const Matrix<double>& a) { return Matrix<double>(a.array().tanh()); };
  // The last code: l(y, W_3 f(c_2) + b_3) + mu ||c_2 - c_2^0||^2, c_2^0 its forward value.
  Matrix<double> logits;
  net.affine(2, f(c[1]), logits);
  const RowVector<double> top =
      net.loss_values(logits, y) + config.mu * (c[1] - forward.a[1]).colwise().squaredNorm();
  CHECK((method.code_objective(1) - top).norm() < 1e-12 * top.norm());
  // Its value at the forward pass is the loss.
  CHECK((method.initial_code_objective(1) - net.loss_values(forward.z.back(), y)).norm() < 1e-12);
  // The first code: ||c_2 - (W_2 f(c_1) + b_2)||^2 + ||c_1 - c_1^0||^2 (1:1, no mu).
  Matrix<double> prediction;
  net.affine(1, f(c[0]), prediction);
  const RowVector<double> first =
      (c[1] - prediction).colwise().squaredNorm() + (c[0] - forward.a[0]).colwise().squaredNorm();
  CHECK((method.code_objective(0) - first).norm() < 1e-12 * first.norm());

  // The report's energy is the batch mean of the joint objective at the updated codes.
  Matrix<double> a1;
  net.affine(0, x, a1);
  const double joint = (net.loss_values(logits, y) +
                        config.mu * ((c[0] - a1).colwise().squaredNorm() +
                                     (c[1] - prediction).colwise().squaredNorm()))
                           .mean();
  CHECK(report.inner_energy == Approx(joint).epsilon(1e-12));
  CHECK(report.inner_iterations == 5);
  CHECK(report.inner_residual > 0);
}

TEST_CASE("AltMin weight updates lower every layer's local loss", "[altmin]") {
  random_source random(33);
  auto net = make_mlp<double, relu>({4, 8, 8, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 20);
  const Matrix<double> y = random_one_hot<double>(random, 3, 20);
  for (const Index iterations : {Index(1), Index(3)}) {
    altmin<double>::settings config;
    config.weight_iterations = iterations;
    altmin<double> method(config);
    auto trained = net;
    method.update_codes(trained, x, y);
    std::vector<double> before;
    for (Index k = 0; k < net.depth(); ++k) before.push_back(method.local_loss(trained, k, y));
    method.update_weights(trained, y);
    for (Index k = 0; k < net.depth(); ++k) {
      const double after = method.local_loss(trained, k, y);
      CAPTURE(iterations, k, before[std::size_t(k)], after);
      CHECK(after < before[std::size_t(k)]);
    }
  }
}

TEST_CASE("AltMin trains small problems", "[altmin]") {
  random_source random(34);
  Matrix<double> x, y;
  blobs(random, 150, 0.6, x, y);

  SECTION("4-16-3 ReLU with native steps") {
    auto net = make_mlp<double, relu>({4, 16, 3});
    net.initialize(init_scheme::glorot_uniform, random);
    const double initial = mean_loss(net, x, y);
    altmin<double> method;
    for (int epoch = 0; epoch < 20; ++epoch)
      for (Index begin = 0; begin < 150; begin += 30)
        method.train_step(net, x.middleCols(begin, 30), y.middleCols(begin, 30));
    const double final_loss = mean_loss(net, x, y);
    CAPTURE(initial, final_loss);
    CHECK(final_loss < 0.3 * initial);
  }

  SECTION("4-16-16-3 tanh under the trainer, natively and by its gradient with Adam") {
    auto start = make_mlp<double, tanh_pair>({4, 16, 16, 3});
    start.initialize(init_scheme::glorot_uniform, random);
    dataset<double> data{x, y, {}};
    const double initial = mean_loss(start, x, y);
    for (const step_mode mode : {step_mode::native, step_mode::gradient}) {
      auto net = start;
      altmin<double> method;
      adam<double> optimizer({.learning_rate = 0.008}, net.parameter_count(), net.weight_count());
      trainer<decltype(net), altmin<double>, adam<double>> loop(net, method, optimizer, 25, 5,
                                                                 mode);
      epoch_report report;
      for (int epoch = 0; epoch < 20; ++epoch) report = loop.run_epoch(data);
      const double final_loss = mean_loss(net, x, y);
      CAPTURE(int(mode), initial, final_loss, report.running_error);
      CHECK(final_loss < 0.3 * initial);
      CHECK(std::isfinite(report.inner_residual));
    }
  }
}

TEST_CASE("AltMin with a large mu and tiny code steps stays at the forward pass", "[altmin]") {
  random_source random(35);
  auto net = make_mlp<double, sigmoid>({4, 7, 6, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 9);
  const Matrix<double> y = random_one_hot<double>(random, 3, 9);
  altmin<double>::settings config;
  config.mu = 1e6;
  config.code_rate = 1e-12;
  altmin<double> method(config);
  Vector<double> estimate;
  method.gradient(net, x, y, estimate);

  forward_state<double> forward;
  net.forward(x, forward);
  for (Index k = 0; k + 1 < net.depth(); ++k) {
    const auto u = std::size_t(k);
    CHECK((method.codes()[u] - forward.a[u]).norm() < 1e-9 * forward.a[u].norm());
  }
  // The hidden layers' local gradients vanish; the top layer's is BP's.
  Vector<double> reference;
  bp<double>{}.gradient(net, x, y, reference);
  const auto& top = net.layer(net.depth() - 1);
  CHECK((top.weights(estimate) - top.weights(reference)).norm() <
        1e-9 * top.weights(reference).norm());
  CHECK((top.bias(estimate) - top.bias(reference)).norm() < 1e-9 * top.bias(reference).norm());
  for (Index k = 0; k + 1 < net.depth(); ++k)
    CHECK(net.layer(k).weights(estimate).norm() < 1e-9 * reference.norm());
}

TEST_CASE("AltMin gradients are batch means", "[altmin]") {
  random_source random(36);
  auto net = make_mlp<double, tanh_pair>({3, 5, 4, 2});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 6);
  const Matrix<double> y = random_one_hot<double>(random, 2, 6);
  Matrix<double> x2(3, 12), y2(2, 12);
  x2 << x, x;
  y2 << y, y;
  Vector<double> once, twice;
  const step_report first = altmin<double>().gradient(net, x, y, once);
  const step_report second = altmin<double>().gradient(net, x2, y2, twice);
  CHECK((once - twice).norm() < 1e-12 * once.norm());
  CHECK(first.loss == Approx(second.loss).epsilon(1e-14));
  CHECK(first.inner_energy == Approx(second.inner_energy).epsilon(1e-12));
}

TEST_CASE("AltMin settings and state are checked", "[altmin]") {
  CHECK(altmin<double>::mu_from_official(0.003, 100) == Approx(3e-5));
  CHECK(altmin<double>().config().mu == Approx(altmin<double>::mu_from_official(0.003, 100)));
  CHECK(altmin<double>().learning_rate() == Approx(0.008));

  using settings = altmin<double>::settings;
  const auto bad = [](auto change) {
    settings config;
    change(config);
    return config;
  };
  CHECK_THROWS_AS(altmin<double>(bad([](settings& s) { s.mu = 0; })), config_error);
  CHECK_THROWS_AS(altmin<double>(bad([](settings& s) { s.code_iterations = -1; })), config_error);
  CHECK_THROWS_AS(altmin<double>(bad([](settings& s) { s.code_rate = 0; })), config_error);
  CHECK_THROWS_AS(altmin<double>(bad([](settings& s) { s.code_momentum = 1; })), config_error);
  CHECK_THROWS_AS(altmin<double>(bad([](settings& s) { s.weight_iterations = -2; })),
                  config_error);
  CHECK_THROWS_WITH(altmin<double>(bad([](settings& s) { s.optimizer.learning_rate = -1; })),
                    Catch::Contains("learning_rate"));
  CHECK_THROWS_AS(altmin<double>::mu_from_official(0.003, 0), config_error);
  altmin<double> method;
  CHECK_THROWS_AS(method.set_learning_rate(0), config_error);
  method.set_learning_rate(0.004);
  CHECK(method.learning_rate() == Approx(0.004));

  auto net = make_mlp<double, relu>({3, 4, 2});
  const Matrix<double> x = Matrix<double>::Zero(3, 5), y = Matrix<double>::Zero(2, 5);
  Vector<double> gradient;
  CHECK_THROWS_AS(method.update_weights(net, y), config_error);
  CHECK_THROWS_AS(method.local_gradient(net, y, gradient), config_error);
  CHECK_THROWS_AS(method.gradient(net, x, Matrix<double>::Zero(3, 5), gradient), shape_error);
  method.update_codes(net, x, y);
  CHECK_THROWS_AS(method.update_weights(net, Matrix<double>::Zero(2, 4)), shape_error);
}

TEST_CASE("AltMin runs in float", "[altmin]") {
  random_source random(37);
  auto net = make_mlp<float, relu>({4, 6, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<float> x = random_matrix<float>(random, 4, 8);
  const Matrix<float> y = random_one_hot<float>(random, 3, 8);
  altmin<float> method;
  const step_report report = method.train_step(net, x, y);
  Vector<float> gradient;
  method.gradient(net, x, y, gradient);
  CHECK(std::isfinite(report.loss));
  CHECK(net.parameters().allFinite());
  CHECK(gradient.allFinite());
}
