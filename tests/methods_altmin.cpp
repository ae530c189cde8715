// Online AltMin (docs/methods.md §5.6): its code objectives are the stated per-sample sums and their
// gradients those of the objectives (finite differences); no code step raises its objective, at
// any mu; the code steps are sized by the stated curvature bound, and one step follows BP's error
// recursion exactly; the local weight gradients are those of the local losses, and the native
// step applies them at their scale; layers whose codes did not move are reported; small problems
// train.

#include <catch2/catch.hpp>

#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "bilevel/activations/activations.hpp"
#include "bilevel/losses/mse.hpp"
#include "bilevel/methods/altmin.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/optimizers/sgd.hpp"
#include "bilevel/train/trainer.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

/// Widths that differ from layer to layer, so that a transposed or shifted index cannot fit.
const std::vector<Index> distinct_widths = {5, 8, 6, 7, 3};

/// Every pair (a, b) of a in `first` and b in `second`.
std::vector<std::pair<double, double>> cartesian(const std::vector<double>& first,
                                                 const std::vector<double>& second) {
  std::vector<std::pair<double, double>> out;
  for (const double a : first)
    for (const double b : second) out.emplace_back(a, b);
  return out;
}

/// A linear pair twice as steep as the slope bound 1 it leaves undeclared: f(a) = 2 a,
/// G(a) = a^2, G*(z) = z^2 / 4. The code steps' curvature bound is 4 times too small for it.
struct steep_linear {
  std::string name() const { return "steep_linear"; }
  template <class S> S f(S a) const { return 2 * a; }
  template <class S> S df(S) const { return 2; }
  template <class S> S G(S a) const { return a * a; }
  template <class S> S G_conj(S z) const { return z * z / 4; }
};

/// f'(a) of the hidden pairs the checks below use, written out independently of the library.
Matrix<double> slope(const relu&, const Matrix<double>& a) {
  return (a.array() > 0).cast<double>().matrix();
}
Matrix<double> slope(const tanh_pair&, const Matrix<double>& a) {
  return (1 - a.array().tanh().square()).matrix();
}

/// Central differences of a code objective's per-sample values in every code entry:
/// column (r, j) of the result holds d values / d code(r, j) over all samples (1 x B each).
template <class Program>
std::vector<RowVector<double>> code_differences(altmin<double>& method, const Program& net,
                                                Index k, const Matrix<double>& y,
                                                const Matrix<double>& code, double step) {
  std::vector<RowVector<double>> out;
  RowVector<double> plus, minus;
  Matrix<double> unused, probe = code;
  for (Index j = 0; j < code.cols(); ++j) {
    for (Index r = 0; r < code.rows(); ++r) {
      probe(r, j) = code(r, j) + step;
      method.evaluate_code_objective(net, k, y, probe, plus, unused);
      probe(r, j) = code(r, j) - step;
      method.evaluate_code_objective(net, k, y, probe, minus, unused);
      probe(r, j) = code(r, j);
      out.push_back((plus - minus) / (2 * step));
    }
  }
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("AltMin code updates lower every code's objective", "[altmin]", tanh_pair,
                   relu, sigmoid, softmax) {
  random_source random(31);
  auto net = make_mlp<double, TestType>({5, 7, 6, 6, 4});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 10);
  const Matrix<double> y = random_one_hot<double>(random, 4, 10);
  altmin<double> method;
  const step_report report = method.update_codes(net, x, y);
  for (Index k = 0; k + 1 < net.depth(); ++k) {
    const RowVector<double>& before = method.initial_code_objective(k);
    const RowVector<double>& after = method.code_objective(k);
    CAPTURE(k, before.mean(), after.mean());
    CHECK((after.array() <= before.array()).all());
    CHECK(after.mean() < before.mean());
  }
  CHECK(report.idle_layers == 0);
  CHECK(report.unconverged == 0);
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
  // evaluate_code_objective gives the same objectives at any code.
  RowVector<double> values;
  Matrix<double> gradient;
  method.evaluate_code_objective(net, 0, y, c[0], values, gradient);
  CHECK((values - first).norm() < 1e-12 * first.norm());

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

TEMPLATE_TEST_CASE("AltMin code gradients are those of the code objectives, sample by sample",
                   "[altmin]", tanh_pair, relu) {
  random_source random(41);
  auto net = make_mlp<double, TestType>(distinct_widths);
  randomize(net, random, 0.5);
  const Matrix<double> x = random_matrix<double>(random, 5, 4);
  const Matrix<double> y = random_one_hot<double>(random, 3, 4);
  altmin<double>::settings config;
  config.mu = 0.37;
  altmin<double> method(config);
  method.update_codes(net, x, y);
  forward_state<double> forward;
  net.forward(x, forward);
  for (Index k = 0; k + 1 < net.depth(); ++k) {
    // Away from the forward codes, where the proximity term's gradient 2 p (c - c^0) is not 0.
    const auto u = std::size_t(k);
    const Matrix<double> code =
        forward.a[u] + random_matrix<double>(random, forward.a[u].rows(), x.cols(), 0.4);
    RowVector<double> values;
    Matrix<double> gradient;
    method.evaluate_code_objective(net, k, y, code, values, gradient);
    const auto differences = code_differences(method, net, k, y, code, 1e-6);
    double worst = 0;
    for (Index j = 0; j < code.cols(); ++j) {
      for (Index r = 0; r < code.rows(); ++r) {
        RowVector<double> expected = RowVector<double>::Zero(code.cols());
        expected(j) = gradient(r, j);  // one sample's code moves only its own objective
        const RowVector<double>& actual = differences[std::size_t(j * code.rows() + r)];
        worst = std::max(worst, (actual - expected).cwiseAbs().maxCoeff());
      }
    }
    CAPTURE(k, worst, gradient.cwiseAbs().maxCoeff());
    CHECK(worst < 1e-7 * gradient.cwiseAbs().maxCoeff());
  }
}

TEMPLATE_TEST_CASE("AltMin's local weight gradients are those of its local losses", "[altmin]",
                   tanh_pair, relu) {
  random_source random(42);
  auto net = make_mlp<double, TestType>(distinct_widths);
  randomize(net, random, 0.5);
  const Matrix<double> x = random_matrix<double>(random, 5, 6);
  const Matrix<double> y = random_one_hot<double>(random, 3, 6);
  altmin<double>::settings config;
  config.mu = 2.5;
  altmin<double> method(config);
  Vector<double> estimate;
  method.gradient(net, x, y, estimate);
  // Each parameter moves only its own layer's local loss: mean_j ||c_k - (W f(c_{k-1}) + b)||^2
  // for hidden layers, the mean loss for the top layer (at the codes of the update above).
  Vector<double> differences(net.parameter_count());
  const double step = 1e-6;
  const auto differentiate = [&](Index k, Index offset, Index count) {
    for (Index p = offset; p < offset + count; ++p) {
      auto probe = net;
      probe.parameters()(p) += step;
      const double plus = method.local_loss(probe, k, y);
      probe.parameters()(p) -= 2 * step;
      const double minus = method.local_loss(probe, k, y);
      differences(p) = (plus - minus) / (2 * step);
    }
  };
  for (Index k = 0; k < net.depth(); ++k) {
    const auto& layer = net.layer(k);
    differentiate(k, layer.weight_offset(), layer.inputs() * layer.outputs());
    differentiate(k, layer.bias_offset(), layer.outputs());
  }
  for (Index k = 0; k < net.depth(); ++k) {
    const auto& layer = net.layer(k);
    CAPTURE(k);
    CHECK(relative_error(layer.weights(estimate).reshaped(),
                         layer.weights(differences).reshaped()) < 1e-7);
    CHECK(relative_error(layer.bias(estimate), layer.bias(differences)) < 1e-7);
  }
}

TEST_CASE("AltMin's native step applies its local gradients at their scale", "[altmin]") {
  // Adam with an epsilon far above every gradient entry is SGD with rate lr / epsilon, so the
  // step shows any factor on the gradient that Adam's scale invariance would otherwise hide.
  random_source random(43);
  auto net = make_mlp<double, tanh_pair>(distinct_widths);
  randomize(net, random, 0.5);
  const Matrix<double> x = random_matrix<double>(random, 5, 6);
  const Matrix<double> y = random_one_hot<double>(random, 3, 6);
  altmin<double>::settings config;
  config.mu = 0.6;
  config.optimizer.epsilon = 1e8;
  config.optimizer.learning_rate = 0.05 * 1e8;
  Vector<double> gradient;
  altmin<double>(config).gradient(net, x, y, gradient);
  auto stepped = net;
  altmin<double>(config).train_step(stepped, x, y);
  const Vector<double> expected = net.parameters() - 0.05 * gradient;
  CHECK(relative_error(stepped.parameters() - net.parameters(),
                       expected - net.parameters()) < 1e-6);
}

TEST_CASE("AltMin weight updates lower every layer's local loss", "[altmin]") {
  random_source random(33);
  auto net = make_mlp<double, relu>({4, 8, 8, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 20);
  const Matrix<double> y = random_one_hot<double>(random, 3, 20);
  for (const Index iterations : {Index(1), Index(3)}) {
    // Adam moves every weight by about its learning rate, whatever the gradient's size; the
    // default code steps leave targets close to the forward pass, which a step of 0.008 can
    // overshoot, so a small rate makes this a check of descent.
    altmin<double>::settings config;
    config.weight_iterations = iterations;
    config.optimizer.learning_rate = 1e-4;
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

TEMPLATE_TEST_CASE("AltMin code steps never raise a code objective, at any mu, and every hidden "
                   "layer gets a signal",
                   "[altmin]", relu, tanh_pair, sigmoid, softmax) {
  random_source random(44);
  auto net = make_mlp<double, TestType>({12, 16, 14, 10});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = random_matrix<double>(random, 12, 16);
  const Matrix<double> y = random_one_hot<double>(random, 10, 16);
  // The default rate, and the largest allowed, where momentum carries codes past their minima.
  for (const auto& [mu, rate] : cartesian({1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4},
                                         {0.05, 1.05})) {
    altmin<double>::settings config;
    config.mu = mu;
    config.code_rate = rate;
    altmin<double> method(config);
    Vector<double> estimate;
    const step_report report = method.gradient(net, x, y, estimate);
    CAPTURE(mu, rate);
    for (Index k = 0; k + 1 < net.depth(); ++k) {
      CAPTURE(k);
      const RowVector<double>& before = method.initial_code_objective(k);
      const RowVector<double>& after = method.code_objective(k);
      CHECK((after.array() <= before.array()).all());
      CHECK(after.mean() < before.mean());
      CHECK(net.layer(k).weights(estimate).norm() > 0);
    }
    CHECK(report.idle_layers == 0);
  }
}

TEST_CASE("AltMin code steps recover where the curvature bound fails", "[altmin]") {
  // With a pair steeper than its stated bound, steps from rest overshoot: each such step is
  // undone and the sample's step halved until it descends; no objective rises, every code moves,
  // and the objectives reported are those of the codes kept.
  random_source random(49);
  auto net = make_mlp<double, steep_linear, mse>(distinct_widths);
  randomize(net, random, 0.5);
  const Matrix<double> x = random_matrix<double>(random, 5, 12);
  const Matrix<double> y = random_one_hot<double>(random, 3, 12);
  forward_state<double> forward;
  net.forward(x, forward);
  altmin<double>::settings config;
  config.mu = 1e-3;
  config.code_rate = 1.05;
  config.code_iterations = 1;
  altmin<double> single(config);
  single.update_codes(net, x, y);
  // One step: the last code's first step rises for some samples (MSE's curvature is the bound's
  // exactly, the pair's slope twice the bound's), which keep their forward code.
  const Index top = net.depth() - 2;
  const auto u = std::size_t(top);
  const Matrix<double> first = single.codes()[u] - forward.a[u];
  CHECK((first.colwise().norm().array() == 0).any());

  // A rise restarts from rest with half the step: after r steps that all rose, a sample's next
  // step is c^0 - (1 + m) 2^-r h g(c^0), or it rises again and the code stays at c^0.
  RowVector<double> values;
  Matrix<double> gradient;
  single.evaluate_code_objective(net, top, y, forward.a[u], values, gradient);
  const double step = config.code_rate / single.code_curvature(top);
  Matrix<double> still = (first.colwise().norm().array() == 0).cast<double>().matrix();
  Index restarts = 0;
  for (Index rises = 1; rises <= 4; ++rises) {
    config.code_iterations = rises + 1;
    altmin<double> restarted(config);
    restarted.update_codes(net, x, y);
    const Matrix<double> moved = restarted.codes()[u] - forward.a[u];
    const Matrix<double> expected =
        -(1 + config.code_momentum) * step * std::pow(0.5, double(rises)) * gradient;
    for (Index j = 0; j < x.cols(); ++j) {
      if (still(0, j) == 0) continue;
      CAPTURE(rises, j);
      if (moved.col(j).norm() == 0) continue;
      CHECK((moved.col(j) - expected.col(j)).norm() < 1e-12 * expected.col(j).norm());
      still(0, j) = 0;
      ++restarts;
    }
  }
  CHECK(restarts > 0);

  config.code_iterations = 8;
  altmin<double> method(config);
  const step_report report = method.update_codes(net, x, y);
  CHECK(report.idle_layers == 0);
  for (Index k = 0; k + 1 < net.depth(); ++k) {
    const auto code = std::size_t(k);
    CAPTURE(k);
    const RowVector<double>& before = method.initial_code_objective(k);
    const RowVector<double>& after = method.code_objective(k);
    CHECK((after.array() < before.array()).all());
    CHECK(((method.codes()[code] - forward.a[code]).colwise().norm().array() > 0).all());
    method.evaluate_code_objective(net, k, y, method.codes()[code], values, gradient);
    CHECK((values - after).norm() <= 1e-14 * after.norm());
  }
}

TEST_CASE("AltMin code steps at large mu stay sized to the last code's curvature", "[altmin]") {
  // The last code's curvature grows like 2 mu, so its step and displacement fall like 1/mu:
  // mu (c - c^0) tends to a limit instead of vanishing (a step that overshot and was dropped)
  // or growing.
  random_source random(45);
  auto net = make_mlp<double, relu>({12, 16, 14, 10});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = random_matrix<double>(random, 12, 16);
  const Matrix<double> y = random_one_hot<double>(random, 10, 16);
  forward_state<double> forward;
  net.forward(x, forward);
  std::vector<double> scaled;
  for (const double mu : {1e2, 1e3, 1e4}) {
    altmin<double>::settings config;
    config.mu = mu;
    altmin<double> method(config);
    method.update_codes(net, x, y);
    CHECK(method.code_curvature(1) > 2 * mu);
    CHECK(method.code_curvature(1) < 2 * mu + 100);
    scaled.push_back(mu * (method.codes()[1] - forward.a[1]).norm());
  }
  CAPTURE(scaled[0], scaled[1], scaled[2]);
  CHECK(scaled[2] > 0);
  CHECK(std::abs(scaled[2] / scaled[1] - 1) < 0.05);
}

TEMPLATE_TEST_CASE("AltMin's step size is code_rate over the stated curvature bound", "[altmin]",
                   softmax_cross_entropy, mse) {
  // L_k = 2 p + s^2 ||W_{k+1}||_2^2 kappa: p = mu for the last code and 1 for the others,
  // kappa 2 for the squared error of the earlier codes, the loss's curvature for the last (1/2
  // for softmax cross-entropy, 1 for MSE through the identity), s = sup f' (1/4 for sigmoid).
  random_source random(46);
  auto net = make_mlp<double, sigmoid, TestType>(distinct_widths);
  randomize(net, random, 0.8);
  const Matrix<double> x = random_matrix<double>(random, 5, 4);
  const Matrix<double> y = random_one_hot<double>(random, 3, 4);
  altmin<double>::settings config;
  config.mu = 0.3;
  altmin<double> method(config);
  method.update_codes(net, x, y);
  const double loss_curvature = std::is_same_v<TestType, mse> ? 1.0 : 0.5;
  for (Index k = 0; k + 1 < net.depth(); ++k) {
    const bool last = k + 2 == net.depth();
    const Matrix<double> W = net.weights(k + 1);
    const double norm = Eigen::JacobiSVD<Matrix<double>>(W).singularValues()(0);
    const double expected =
        2 * (last ? config.mu : 1.0) + norm * norm / 16 * (last ? loss_curvature : 2.0);
    CAPTURE(k, expected, method.code_curvature(k));
    CHECK(method.code_curvature(k) == Approx(expected).epsilon(1e-6));
  }
}

TEMPLATE_TEST_CASE("AltMin's first code step follows BP's error recursion", "[altmin]", tanh_pair,
                   relu) {
  // With one code step, c_{L-1} - c_{L-1}^0 = -(1 + m) h_{L-1} delta_{L-1} and
  // c_k - c_k^0 = 2 (1 + m) h_k f'(a_k) .* W_{k+1}^T (c_{k+1} - c_{k+1}^0), h_k = rate / L_k:
  // every code moves along BP's error delta_k, by a factor of its layer's.
  random_source random(47);
  auto net = make_mlp<double, TestType>(distinct_widths);
  randomize(net, random, 0.5);
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 3, 7);
  altmin<double>::settings config;
  config.mu = 0.7;
  config.code_iterations = 1;
  config.code_rate = 0.3;
  config.code_momentum = 0.8;
  altmin<double> method(config);
  method.update_codes(net, x, y);
  forward_state<double> forward;
  net.forward(x, forward);
  const Index L = net.depth();
  const double push = 1 + config.code_momentum;
  // BP's errors, written out: delta_L = dl/da_L (identity output), delta_k = f' .* W^T delta.
  Matrix<double> delta(y.rows(), y.cols());
  net.loss().template gradient<double>(forward.z.back(), y, delta);
  Matrix<double> expected;
  for (Index k = L - 2; k >= 0; --k) {
    const auto u = std::size_t(k);
    const double step = config.code_rate / method.code_curvature(k);
    delta = slope(TestType{}, forward.a[u]).cwiseProduct(net.weights(k + 1).transpose() * delta);
    if (k == L - 2)
      expected = -push * step * delta;
    else
      expected = 2 * push * step *
                 slope(TestType{}, forward.a[u])
                     .cwiseProduct(net.weights(k + 1).transpose() *
                                   (method.codes()[u + 1] - forward.a[u + 1]));
    const Matrix<double> moved = method.codes()[u] - forward.a[u];
    CAPTURE(k, moved.norm(), expected.norm());
    CHECK((moved - expected).norm() < 1e-12 * expected.norm());
    // The direction is BP's error of the layer, with one factor for all its samples.
    const double factor = moved.norm() / delta.norm();
    CHECK((moved + factor * delta).norm() < 1e-12 * moved.norm());
  }
}

TEST_CASE("AltMin reports hidden layers none of whose codes moved", "[altmin]") {
  random_source random(48);
  auto net = make_mlp<double, relu>(distinct_widths);
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 6);
  const Matrix<double> y = random_one_hot<double>(random, 3, 6);
  const Index hidden = net.depth() - 1;

  SECTION("no code steps: every hidden layer is idle, with a local gradient of exactly 0") {
    altmin<double>::settings config;
    config.code_iterations = 0;
    altmin<double> method(config);
    Vector<double> estimate;
    const step_report report = method.gradient(net, x, y, estimate);
    CHECK(report.idle_layers == hidden);
    for (Index k = 0; k < hidden; ++k) {
      CHECK(net.layer(k).weights(estimate).isZero(0));
      CHECK(net.layer(k).bias(estimate).isZero(0));
    }
    auto trained = net;
    CHECK(altmin<double>(config).train_step(trained, x, y).idle_layers == hidden);
  }

  SECTION("a dead first layer: its code cannot move, the layer above still learns") {
    net.bias(0).setConstant(-100);  // every unit of layer 1 off: f'(c_1) = 0, c_1 stays
    for (Index k = 1; k < net.depth(); ++k) net.bias(k).setConstant(0.3);  // off the kinks
    altmin<double> method;
    Vector<double> estimate;
    const step_report report = method.gradient(net, x, y, estimate);
    CHECK(report.idle_layers == 1);
    CHECK(net.layer(0).weights(estimate).isZero(0));
    CHECK(net.layer(0).bias(estimate).isZero(0));
    // Layer 2 sees f(c_1) = 0: only its bias learns; the layers above learn in full.
    CHECK(net.layer(1).bias(estimate).norm() > 0);
    for (Index k = 2; k < net.depth(); ++k) CHECK(net.layer(k).weights(estimate).norm() > 0);
  }

  SECTION("a live net has no idle layer") {
    altmin<double> method;
    Vector<double> estimate;
    CHECK(method.gradient(net, x, y, estimate).idle_layers == 0);
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
    dataset<double> data{x, y};
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
  // A step from rest must stay below 2 / L: code_rate (1 + momentum) < 2.
  CHECK_THROWS_WITH(altmin<double>(bad([](settings& s) { s.code_rate = 1.06; })),
                    Catch::Contains("code_rate must be in (0, 2 / (1 + code_momentum))"));
  CHECK_NOTHROW(altmin<double>(bad([](settings& s) { s.code_rate = 1.05; })));
  CHECK_NOTHROW(altmin<double>(bad([](settings& s) {
    s.code_rate = 1.9;
    s.code_momentum = 0;
  })));
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
  Matrix<double> y = Matrix<double>::Zero(2, 5);
  y.row(0).setOnes();  // valid targets: one-hot columns
  const Matrix<double> x = Matrix<double>::Zero(3, 5);
  Vector<double> gradient;
  RowVector<double> values;
  Matrix<double> code_gradient;
  CHECK_THROWS_AS(method.update_weights(net, y), config_error);
  CHECK_THROWS_AS(method.local_gradient(net, y, gradient), config_error);
  CHECK_THROWS_AS(method.evaluate_code_objective(net, 0, y, Matrix<double>::Zero(4, 5), values,
                                                 code_gradient),
                  config_error);
  CHECK_THROWS_AS(method.gradient(net, x, Matrix<double>::Zero(3, 5), gradient), shape_error);
  method.update_codes(net, x, y);
  CHECK_THROWS_AS(method.update_weights(net, Matrix<double>::Zero(2, 4)), shape_error);
  CHECK_THROWS_AS(method.evaluate_code_objective(net, 1, y, Matrix<double>::Zero(4, 5), values,
                                                 code_gradient),
                  config_error);
  CHECK_THROWS_AS(method.evaluate_code_objective(net, 0, y, Matrix<double>::Zero(3, 5), values,
                                                 code_gradient),
                  shape_error);
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
