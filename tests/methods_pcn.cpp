// PCN and Z-IL (docs/methods.md §5.4, §5.6b): Z-IL reproduces BP exactly through PCN's own
// inference and every other schedule does not; one inference step against its closed form, with
// and without a spacing; at s = 1 the estimate is the finite-difference gradient of
// V_s = mean_j min_z F_s^j / s and equals MAC's at mu = 1 / s; at defaults every layer's error to
// BP falls linearly with s down to the tolerance floor; inference descends the energy; the
// first-order start is an option, off by default; the report counts samples left at the cap.

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "bilevel/activations/activations.hpp"
#include "bilevel/losses/mse.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/methods/mac.hpp"
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

/// PCN taking exactly `steps` plain inference steps (a tolerance no sample meets before them).
pcn<double> make_pcn(Index steps, double rate, bool zero_divergence = false, double spacing = 1) {
  pcn<double>::settings config;
  config.inference = pcn_inference::plain;
  config.stopping = {1e-14, steps};
  config.inference_rate = rate;
  config.zero_divergence = zero_divergence;
  config.spacing = spacing;
  return pcn<double>(config);
}

/// PCN with its inference solved tightly by plain steps.
pcn<double> tight_pcn(double spacing) {
  pcn<double>::settings config;
  config.inference = pcn_inference::plain;
  config.spacing = spacing;
  config.stopping = {1e-11, 100000};
  return pcn<double>(config);
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
  // Z-IL's schedule with a spacing on the loss: still BP, since every signal it reads is s
  // times BP's delta, divided by s.
  make_pcn(1, 1.0, true, 0.3).gradient(net, x, y, gradient);
  CHECK(relative_error(gradient, reference) < 1e-12);
  // The Z-IL schedule at another rate: only the output layer (read at t = 0) still agrees.
  auto half = make_pcn(50, 0.5, true);
  CHECK(half.name() == "zil");
  half.gradient(net, x, y, gradient);
  CHECK(relative_error(gradient, reference) > 1e-3);
  const auto& top = net.layer(L - 1);
  CHECK((top.weights(gradient) - top.weights(reference)).norm() <
        1e-12 * top.weights(reference).norm());
  // PCN at its defaults: the classic spacing 1, cold start, mixed steps, converged.
  pcn<double> defaults;
  CHECK(defaults.name() == "pcn");
  CHECK(defaults.config().spacing == 1);
  CHECK(defaults.config().inference_rate == 0.1);
  CHECK(defaults.config().start == inner_start::forward);
  CHECK(defaults.config().inference == pcn_inference::anderson);
  const step_report report = defaults.gradient(net, x, y, gradient);
  CHECK(report.converged());
  CHECK(relative_error(gradient, reference) > 1e-3);
}

TEST_CASE("one PCN inference step against its closed form; batch means; buffer reuse",
          "[pcn]") {
  // Two layers, tanh hidden, identity output, MSE, spacing s. From the forward pass (eps_1 = 0):
  //   z_1' = z_1 - r s W_2^T g, g = z_2 - y;  eps_1 = z_1' - tanh(a_1) = -r s W_2^T g;
  //   dW_1 = -(tanh'(a_1) .* eps_1) x^T / (s B);  dW_2 = g' z_1'^T / B, g' = W_2 z_1' + b_2 - y.
  const double s = GENERATE(1.0, 0.25);
  CAPTURE(s);
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
  const Matrix<double> z1_new = z1 - r * s * net.weights(1).transpose() * g;
  const Matrix<double> eps1 = z1_new - z1;
  const Matrix<double> s1 = -((1 - z1.array().square()) * eps1.array()).matrix() / s;
  const Matrix<double> g_new = ((net.weights(1) * z1_new).colwise() + net.bias(1)) - y;
  const Matrix<double> descent = (eps1 + s * net.weights(1).transpose() * g_new) / s;

  Vector<double> gradient;
  auto method = make_pcn(1, r, false, s);
  const step_report report = method.gradient(net, x, y, gradient);
  CHECK((net.layer(0).weights(gradient) - s1 * x.transpose() / B).norm() < 1e-12);
  CHECK((net.layer(0).bias(gradient) - s1.rowwise().sum() / B).norm() < 1e-12);
  CHECK((net.layer(1).weights(gradient) - g_new * z1_new.transpose() / B).norm() < 1e-12);
  CHECK((net.layer(1).bias(gradient) - g_new.rowwise().sum() / B).norm() < 1e-12);
  CHECK(report.loss == Approx(g.colwise().squaredNorm().mean() / 2).epsilon(1e-13));
  CHECK(report.correct == count_correct<double>(z2, y));
  CHECK(report.inner_iterations == 1);
  // The energy reported is F_s / s, in the loss's units.
  CHECK(report.inner_energy ==
        Approx((g_new.colwise().squaredNorm() + eps1.colwise().squaredNorm() / s).mean() / 2)
            .epsilon(1e-12));
  CHECK(report.inner_residual == Approx(descent.colwise().norm().mean()).epsilon(1e-12));
  CHECK((method.state()[1] - z1_new).norm() < 1e-14);
  CHECK(report.unconverged == 5);  // one step cannot meet the rule

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

TEST_CASE("PCN at defaults: every layer's error to BP falls like the spacing to the floor",
          "[pcn]") {
  // F_s = sum_k E_k + s l and the estimate divided by s: first order in s per layer (a smooth
  // net with distinct layer sizes), down to the floor the tolerance leaves (§5.6b).
  random_source random(65);
  auto net = make_mlp<double, tanh_pair>({5, 8, 6, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 4, 7);
  const Vector<double> reference = bp_gradient(net, x, y);
  const std::vector<double> spacings = {1e-1, 1e-2, 1e-3, 1e-6};
  std::vector<std::vector<double>> errors(spacings.size());
  for (std::size_t m = 0; m < spacings.size(); ++m) {
    pcn<double>::settings config;
    config.spacing = spacings[m];
    Vector<double> estimate;
    const step_report report = pcn<double>(config).gradient(net, x, y, estimate);
    CHECK(report.converged());
    for (Index i = 0; i < net.depth(); ++i) errors[m].push_back(layer_error(net, i, estimate, reference));
  }
  for (Index i = 0; i < net.depth(); ++i) {
    const auto k = std::size_t(i);
    CAPTURE(i, errors[0][k], errors[1][k], errors[2][k], errors[3][k]);
    // Second order still shows at s = 0.1; one decade further down the error is linear.
    CHECK(errors[1][k] < 0.2 * errors[0][k]);
    CHECK(errors[2][k] < 0.12 * errors[1][k]);
    CHECK(errors[2][k] > 0.08 * errors[1][k]);
    CHECK(errors[0][k] > 0.05);
    // The floor: about the tolerance (1e-4), reached at s = 1e-6.
    CHECK(errors[3][k] < 3e-4);
  }
}

TEST_CASE("PCN at s = 1 is the gradient of min_z F_s / s, and MAC's estimate at mu = 1 / s",
          "[pcn]") {
  // The classic PCN (s = 1) is far from BP; what it must equal is the gradient of the surrogate
  // it minimises, V_s(theta) = mean_j min_z F_s^j(z, theta) / s (envelope theorem), which is also
  // MAC's V at mu = 1 / s, reached by another solver. Distinct layer sizes.
  random_source random(66);
  auto net = make_mlp<double, tanh_pair>({3, 6, 5, 2});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 4);
  const Matrix<double> y = random_one_hot<double>(random, 2, 4);
  Vector<double> estimate;
  const step_report report = tight_pcn(1).gradient(net, x, y, estimate);
  REQUIRE(report.converged());

  const auto value = [&](const auto& program) {
    Vector<double> unused;
    const step_report at = tight_pcn(1).gradient(program, x, y, unused);
    CHECK(at.converged());
    return at.inner_energy;
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
  const Vector<double> reference = bp_gradient(net, x, y);
  for (Index i = 0; i < net.depth(); ++i) {
    CAPTURE(i);
    CHECK(layer_error(net, i, estimate, numeric) < 1e-7);
    CHECK(layer_error(net, i, estimate, reference) > 1e-2);
  }

  for (const double s : {1.0, 0.05}) {
    mac<double>::settings config;
    config.mu = 1 / s;
    config.z_stopping = {1e-11, 10000};
    Vector<double> pcn_estimate, mac_estimate;
    tight_pcn(s).gradient(net, x, y, pcn_estimate);
    mac<double>(config).gradient(net, x, y, mac_estimate);
    CAPTURE(s);
    CHECK(relative_error(pcn_estimate, mac_estimate) < 1e-7);
  }
}

TEST_CASE("PCN inference never increases the energy and drives its gradient to zero",
          "[pcn]") {
  random_source random(67);
  auto net = make_mlp<double, tanh_pair>({5, 8, 7, 6, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 10);
  const Matrix<double> y = random_one_hot<double>(random, 4, 10);
  Vector<double> gradient;
  std::vector<double> energy, residual;
  for (Index t = 1; t <= 30; ++t) {
    const step_report report = make_pcn(t, 0.1).gradient(net, x, y, gradient);
    CHECK(report.inner_iterations == t);
    energy.push_back(report.inner_energy);
    residual.push_back(report.inner_residual);
  }
  // At t = 0 the state is the forward pass: every layer error is 0, F is the loss.
  const double loss = mean_loss(net, x, y);
  CHECK(energy[0] < loss);
  CHECK(energy.back() < 0.5 * loss);
  for (std::size_t t = 1; t < energy.size(); ++t) {
    INFO("step " << t << ": F " << energy[t - 1] << " -> " << energy[t]);
    CHECK(energy[t] <= energy[t - 1]);
  }
  CHECK(residual.back() < 0.2 * residual.front());
  // At defaults, inference stops where the rule holds: a stationary point of F.
  const step_report settled = pcn<double>().gradient(net, x, y, gradient);
  INFO("residual " << residual.front() << " at t = 1, " << residual.back() << " at t = 30, "
                   << settled.inner_residual << " at the end");
  CHECK(settled.converged());
  CHECK(settled.inner_residual < 1e-4 * residual.front());
  CHECK(settled.inner_energy <= energy.back());
}

TEST_CASE("PCN's first-order start is an option: O(s^2) from the minimiser, same result",
          "[pcn]") {
  random_source random(68);
  auto net = make_mlp<double, tanh_pair>({4, 7, 6, 5, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 6);
  const Matrix<double> y = random_one_hot<double>(random, 3, 6);
  std::vector<double> ratios;
  for (const double s : {1e-2, 1e-3}) {
    // One step from each start: the energy left above the minimum after it, relative.
    pcn<double>::settings one_step;
    one_step.spacing = s;
    one_step.stopping = {1e-14, 1};
    Vector<double> estimate, cold_estimate, warm_estimate;
    const double minimum = tight_pcn(s).gradient(net, x, y, estimate).inner_energy;
    const double cold = pcn<double>(one_step).gradient(net, x, y, estimate).inner_energy;
    one_step.start = inner_start::first_order;
    const double warm = pcn<double>(one_step).gradient(net, x, y, estimate).inner_energy;
    CHECK(warm >= minimum);
    ratios.push_back((warm - minimum) / (cold - minimum));

    pcn<double>::settings defaults;
    defaults.spacing = s;
    const step_report cold_report = pcn<double>(defaults).gradient(net, x, y, cold_estimate);
    defaults.start = inner_start::first_order;
    const step_report warm_report = pcn<double>(defaults).gradient(net, x, y, warm_estimate);
    CHECK(cold_report.converged());
    CHECK(warm_report.converged());
    CHECK(warm_report.inner_iterations < cold_report.inner_iterations);
    CHECK(relative_error(warm_estimate, cold_estimate) < 1e-3);
  }
  CAPTURE(ratios);
  CHECK(ratios[0] < 1e-2);
  CHECK(ratios[1] < 0.02 * ratios[0]);
}

TEST_CASE("a sample's inference does not depend on its batch: the solve retires converged "
          "samples and keeps each one's own data",
          "[pcn]") {
  const auto measured = batch_dependence<tanh_pair>(
      39, [] { return tight_pcn(0.3); }, [](pcn<double>& m) -> const auto& { return m.state(); });
  REQUIRE(measured.batch_converged);
  // The samples converge at different sweeps, so the batch's solve retires them in turn.
  CHECK(measured.fewest_sweeps < measured.most_sweeps);
  CHECK(measured.largest < 1e-6);

  // At rate 2 every sample overshoots and halves its own rate, at its own steps: each keeps
  // its rate when the batch retires others around it.
  const auto overshooting = batch_dependence<tanh_pair>(
      39,
      [] {
        pcn<double>::settings config = tight_pcn(0.3).config();
        config.inference_rate = 2;
        return pcn<double>(config);
      },
      [](pcn<double>& m) -> const auto& { return m.state(); });
  REQUIRE(overshooting.batch_converged);
  CHECK(overshooting.fewest_sweeps < overshooting.most_sweeps);
  CHECK(overshooting.largest < 1e-6);
}

TEST_CASE("momentum and Anderson mixing (the default) reach the plain steps' equilibrium in "
          "fewer steps",
          "[pcn]") {
  // Both are certified by plain steps (§5.4): the estimate is the plain solve's to the
  // tolerance, at every spacing, from far fewer steps.
  random_source random(70);
  auto net = make_mlp<double, tanh_pair>({5, 8, 7, 6, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 10);
  const Matrix<double> y = random_one_hot<double>(random, 4, 10);
  for (const pcn_inference inference : {pcn_inference::momentum, pcn_inference::anderson}) {
    for (const double s : {1.0, 0.1, 1e-3}) {
      CAPTURE(inference == pcn_inference::momentum, s);
      Vector<double> reference, plain_estimate, estimate;
      tight_pcn(s).gradient(net, x, y, reference);
      pcn<double>::settings config;
      config.spacing = s;
      config.stopping = {1e-8, 100000};
      config.inference = pcn_inference::plain;
      const step_report plain = pcn<double>(config).gradient(net, x, y, plain_estimate);
      config.inference = inference;
      const step_report report = pcn<double>(config).gradient(net, x, y, estimate);
      CHECK(report.converged());
      CHECK(relative_error(estimate, reference) < 1e-6);
      CHECK(relative_error(plain_estimate, reference) < 1e-6);
      CAPTURE(plain.inner_iterations, report.inner_iterations);
      CHECK(report.inner_iterations < plain.inner_iterations / 2);
      // The state and the estimate are read at the iterates: a stationary point of F.
      CHECK(report.inner_residual < 1e-6 * plain.inner_energy);
      CHECK(report.inner_energy == Approx(plain.inner_energy).epsilon(1e-12));
    }
  }
}

TEST_CASE("accelerated inference starts with two plain steps and is read at its iterate",
          "[pcn]") {
  // t = 1 at the start gives m = 0 after the first step, so the second step starts from the
  // first iterate: two accelerated steps are two plain ones. The second extrapolates (m > 0),
  // and a solve cut off by the cap there must still be read at the iterate, not at y.
  random_source random(71);
  auto net = make_mlp<double, tanh_pair>({5, 8, 7, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 6);
  const Matrix<double> y = random_one_hot<double>(random, 4, 6);
  pcn<double>::settings config;
  config.stopping = {1e-14, 2};
  config.inference = pcn_inference::momentum;
  Vector<double> accelerated, plain;
  const step_report report = pcn<double>(config).gradient(net, x, y, accelerated);
  const step_report reference = make_pcn(2, config.inference_rate).gradient(net, x, y, plain);
  CHECK(report.unconverged == 6);
  CHECK(relative_error(accelerated, plain) < 1e-14);
  CHECK(report.inner_energy == Approx(reference.inner_energy).epsilon(1e-14));
}

TEST_CASE("momentum and Anderson mixing do not depend on the batch either", "[pcn]") {
  // At a loose tolerance the rule stops each sample far from its limit, so that the step at
  // which it stops shows in its state: alone and in the batch, a sample must stop at the same
  // step and state (to rounding), whatever the others do.
  for (const pcn_inference inference : {pcn_inference::momentum, pcn_inference::anderson}) {
    CAPTURE(inference == pcn_inference::momentum);
    const auto measured = batch_dependence<tanh_pair>(
        39,
        [inference] {
          pcn<double>::settings config;
          config.spacing = 0.3;
          config.stopping = {1e-3, 100000};
          config.inference = inference;
          config.anderson_memory = 3;
          return pcn<double>(config);
        },
        [](pcn<double>& m) -> const auto& { return m.state(); });
    REQUIRE(measured.batch_converged);
    CHECK(measured.fewest_sweeps < measured.most_sweeps);
    CHECK(measured.largest < 1e-10);
  }
}

TEST_CASE("Anderson mixing solves a quadratic energy in finitely many steps", "[pcn]") {
  // Identity pairs and squared error make F quadratic, so the plain step is an affine map and
  // mixing with a memory of at least the n unknowns of a sample is GMRES on it (Walker and Ni,
  // 2011): the first step is plain, n mixed ones span the Krylov space and the next one lands
  // on the minimiser, n + 2 = 6 steps here, where plain steps take hundreds.
  random_source random(72);
  auto net = make_mlp<double, identity, mse>({3, 2, 2, 2});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 4);
  const Matrix<double> y = random_matrix<double>(random, 2, 4);
  pcn<double>::settings config;
  config.stopping = {1e-13, 100000};
  config.inference = pcn_inference::plain;
  pcn<double> tight(config);
  Vector<double> estimate;
  const step_report plain = tight.gradient(net, x, y, estimate);
  REQUIRE(plain.converged());
  CHECK(plain.inner_iterations > 100);
  config.stopping.max_iterations = 6;
  config.inference = pcn_inference::anderson;
  pcn<double> mixed(config);
  mixed.gradient(net, x, y, estimate);
  for (const Index k : {1, 2}) {
    CAPTURE(k);
    CHECK((mixed.state()[std::size_t(k)] - tight.state()[std::size_t(k)]).cwiseAbs().maxCoeff() <
          1e-10);
  }
}

TEST_CASE("Anderson mixing halves a rate whose plain step climbs", "[pcn]") {
  // At rates 0.5 to 2 the plain steps inside mixing (the first, the fall-backs and the
  // certifying ones) overshoot on this net: without halving every sample ran to the cap. Each
  // sample halves its own rate where its plain step raised F, and reaches the equilibrium of a
  // tight solve at rate 0.1.
  random_source random(39);
  auto net = make_mlp<double, tanh_pair>({5, 8, 7, 6, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 10);
  const Matrix<double> y = random_one_hot<double>(random, 4, 10);
  Vector<double> reference, estimate;
  tight_pcn(0.3).gradient(net, x, y, reference);
  for (const double rate : {0.5, 2.0}) {
    CAPTURE(rate);
    pcn<double>::settings config;
    config.spacing = 0.3;
    config.inference_rate = rate;
    config.stopping = {1e-6, 20000};
    config.inference = pcn_inference::anderson;
    const step_report report = pcn<double>(config).gradient(net, x, y, estimate);
    CHECK(report.converged());
    CHECK(relative_error(estimate, reference) < 1e-5);
  }
}

TEST_CASE("Anderson mixing stays in the forward pass's basin where momentum leaves it",
          "[pcn]") {
  // Tanh nets with weights from N(0, 1), where momentum coasts to another stationary point
  // (§5.4): a mixed point that raises F falls back to the plain step, so mixing only descends
  // and ends where plain steps end, at the trainer's tolerance.
  for (const std::uint64_t seed : {1, 2, 3}) {
    for (const double s : {1.0, 0.1, 0.01}) {
      CAPTURE(seed, s);
      auto net = make_mlp<double, tanh_pair>({5, 8, 7, 6, 4});
      random_source random{seed};
      randomize(net, random, 1.0);
      const Matrix<double> x = random_matrix<double>(random, 5, 10);
      const Matrix<double> y = random_one_hot<double>(random, 4, 10);
      Vector<double> reference, estimate;
      pcn<double>::settings config;
      config.spacing = s;
      config.stopping = {1e-10, 200000};
      config.inference = pcn_inference::plain;
      REQUIRE(pcn<double>(config).gradient(net, x, y, reference).converged());
      config.stopping = {1e-4, 5000};
      config.inference = pcn_inference::anderson;
      const step_report report = pcn<double>(config).gradient(net, x, y, estimate);
      CHECK(report.converged());
      CHECK(relative_error(estimate, reference) < 3e-4);
    }
  }
}

TEST_CASE("PCN's report counts the samples left at the cap", "[pcn]") {
  random_source random(69);
  auto net = make_mlp<double, tanh_pair>({4, 7, 5, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 9);
  const Matrix<double> y = random_one_hot<double>(random, 3, 9);
  pcn<double>::settings config;
  config.stopping.max_iterations = 5;
  Vector<double> gradient;
  const step_report capped = pcn<double>(config).gradient(net, x, y, gradient);
  CHECK(capped.inner_iterations == 5);
  CHECK(capped.unconverged == 9);
  CHECK_FALSE(capped.converged());
  const step_report free = pcn<double>().gradient(net, x, y, gradient);
  CHECK(free.converged());
  CHECK(free.inner_iterations > 5);
  CHECK(free.inner_iterations < pcn<double>().config().stopping.max_iterations);
}

TEST_CASE("a sample whose fixed rate overshoots halves it and converges; the others take the "
          "fixed-rate steps bit for bit",
          "[pcn]") {
  random_source random(72);
  auto net = make_mlp<double, tanh_pair>({4, 7, 5, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 9);
  const Matrix<double> y = random_one_hot<double>(random, 3, 9);
  Vector<double> reference, estimate, fixed_estimate;
  REQUIRE(tight_pcn(1).gradient(net, x, y, reference).converged());

  // F's curvature in z_k is at least 1 (its own error term): rates of 1.5 and 2 overshoot, and
  // the samples halve them, some twice. The first step after a halving jumps from the cycle to
  // near its middle; judged from it, the rule stopped a sample at rate 1.5 early, leaving the
  // estimate 4 times the tolerance from the tight solve's.
  pcn<double>::settings config;
  config.inference = pcn_inference::plain;
  for (const double rate : {1.5, 2.0}) {
    CAPTURE(rate);
    config.inference_rate = rate;
    const step_report halved = pcn<double>(config).gradient(net, x, y, estimate);
    CHECK(halved.converged());
    CHECK(relative_error(estimate, reference) < 1e-4);
  }
  // The fixed rate 2.5 diverges: its states overflow within the cap, which the report must
  // not call converged (stopping_rule.hpp).
  config.inference_rate = 2.5;
  config.rate_halvings = 0;
  config.stopping.max_iterations = 2000;
  const step_report fixed = pcn<double>(config).gradient(net, x, y, fixed_estimate);
  CHECK_FALSE(fixed.converged());
  CHECK_FALSE(all_finite(fixed_estimate));

  // At the default rate these samples never climb: halvings allowed or not, the same bits.
  pcn<double>::settings halving;
  halving.inference = pcn_inference::plain;
  pcn<double>::settings fixed_rate = halving;
  fixed_rate.rate_halvings = 0;
  Vector<double> fixed_rate_estimate;
  const step_report with = pcn<double>(halving).gradient(net, x, y, estimate);
  const step_report without = pcn<double>(fixed_rate).gradient(net, x, y, fixed_rate_estimate);
  CHECK(with.inner_iterations == without.inner_iterations);
  CHECK(estimate == fixed_rate_estimate);
}

TEST_CASE("PCN in float keeps its digits at a small spacing", "[pcn]") {
  // At s = 1e-6 the states move by about 1e-6 of their size: inference on z would drown in
  // float's rounding, and a stopping floor relative to |z^0| would stop it at once; on
  // d = z - z^0 the float estimate matches double's to the tolerance.
  random_source random(32);
  auto net = make_mlp<double, tanh_pair>({5, 8, 6, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 7);
  const Matrix<double> y = random_one_hot<double>(random, 4, 7);
  auto single = make_mlp<float, tanh_pair>({5, 8, 6, 4});
  single.parameters() = net.parameters().cast<float>();
  Vector<double> reference;
  Vector<float> estimate;
  pcn<double>({.spacing = 1e-6}).gradient(net, x, y, reference);
  const step_report report =
      pcn<float>({.spacing = 1e-6f}).gradient(single, x.cast<float>(), y.cast<float>(), estimate);
  CHECK(report.converged());
  const Vector<double> widened = estimate.cast<double>();
  for (Index i = 0; i < net.depth(); ++i) {
    CAPTURE(i);
    CHECK(layer_error(net, i, widened, reference) < 1e-3);
  }
}

TEST_CASE("PCN's dynamics are named and parsed back, and other names are refused", "[pcn]") {
  for (auto inference : {pcn_inference::plain, pcn_inference::momentum, pcn_inference::anderson})
    CHECK(parse_inference(inference_name(inference), "caller") == inference);
  CHECK(inference_name(pcn_inference::anderson) == "anderson");
  CHECK(inference_name(pcn_inference::plain) == "plain");
  CHECK_THROWS_WITH(parse_inference("Plain", "caller"),
                    "caller: inference must be \"plain\", \"momentum\" or \"anderson\", "
                    "got \"Plain\"");
  CHECK_THROWS_AS(parse_inference("", "caller"), config_error);
}

TEST_CASE("PCN rejects bad settings and batches of the wrong shape", "[pcn]") {
  CHECK_THROWS_AS(make_pcn(0, 0.1), config_error);
  CHECK_THROWS_AS(make_pcn(10, 0.0), config_error);
  pcn<double>::settings momentum_on_zil = pcn<double>::zil().config();
  momentum_on_zil.inference = pcn_inference::momentum;
  CHECK_THROWS_WITH(pcn<double>(momentum_on_zil),
                    Catch::Contains("pcn: inference must be plain with zero_divergence") &&
                        Catch::Contains("got momentum"));
  // Z-IL's schedule asked for on the defaults, whose steps are mixed.
  CHECK_THROWS_WITH(pcn<double>({.zero_divergence = true}),
                    Catch::Contains("pcn: inference must be plain") &&
                        Catch::Contains("got anderson"));
  for (const Index memory : {0, 9}) {
    pcn<double>::settings mixing;
    mixing.inference = pcn_inference::anderson;
    mixing.anderson_memory = memory;
    CHECK_THROWS_WITH(pcn<double>(mixing),
                      Catch::Contains("pcn: anderson_memory must be in [1, 8]") &&
                          Catch::Contains("got " + std::to_string(memory)));
  }
  CHECK_THROWS_AS(make_pcn(10, std::numeric_limits<double>::quiet_NaN()), config_error);
  CHECK_THROWS_WITH(make_pcn(10, -0.5), Catch::Contains("pcn") &&
                                            Catch::Contains("inference_rate") &&
                                            Catch::Contains("-0.5"));
  CHECK_THROWS_WITH(make_pcn(-3, 0.1), Catch::Contains("max_iterations") && Catch::Contains("-3"));
  CHECK_THROWS_WITH(make_pcn(10, 0.1, false, -2.0),
                    Catch::Contains("pcn") && Catch::Contains("spacing") && Catch::Contains("-2"));
  CHECK_THROWS_WITH(pcn<double>({.stopping = {.tolerance = 0.0}}),
                    Catch::Contains("pcn") && Catch::Contains("tolerance"));
  CHECK_NOTHROW(make_pcn(1, 1.0));
  CHECK_THROWS_WITH(pcn<double>({.rate_halvings = -1}),
                    Catch::Contains("pcn") && Catch::Contains("rate_halvings") &&
                        Catch::Contains("-1"));

  auto net = make_mlp<double, relu>({3, 4, 2});
  Vector<double> gradient;
  pcn<double> method;
  CHECK_THROWS_AS(method.gradient(net, Matrix<double>::Zero(3, 5), Matrix<double>::Zero(3, 5),
                                  gradient),
                  shape_error);
  CHECK_THROWS_WITH(method.gradient(net, Matrix<double>::Zero(4, 5), Matrix<double>::Zero(2, 5),
                                    gradient),
                    Catch::Contains("pcn::gradient") && Catch::Contains("3 x B") &&
                        Catch::Contains("4x5"));
  CHECK_THROWS_AS(method.gradient(net, Matrix<double>::Zero(3, 0), Matrix<double>::Zero(2, 0),
                                  gradient),
                  config_error);
}
