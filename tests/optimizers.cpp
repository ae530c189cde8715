// SGD, Adam and learning-rate schedules against hand-computed recurrences and closed forms.

#include <bilevel/optimizers/optimizers.hpp>
#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

using bilevel::Index;
template <class S>
using Vector = bilevel::Vector<S>;

namespace {

template <class S>
Vector<S> make_vector(std::initializer_list<S> values) {
  Vector<S> out(static_cast<Index>(values.size()));
  Index i = 0;
  for (S value : values) out(i++) = value;
  return out;
}

// Runs `make()` and checks it throws E with a message containing every one of `parts`.
template <class E, class F>
void require_throws_with(F&& make, std::initializer_list<std::string> parts) {
  try {
    make();
  } catch (const E& e) {
    const std::string message = e.what();
    for (const auto& part : parts) {
      INFO("message: " << message);
      CHECK(message.find(part) != std::string::npos);
    }
    return;
  }
  FAIL("expected exception was not thrown");
}

}  // namespace

TEMPLATE_TEST_CASE("sgd without momentum is exactly p - lr * g", "[optim]", float, double) {
  using S = TestType;
  // Weight decay 0 but a non-trivial prefix: the split into ranges must not change anything.
  bilevel::sgd<S> opt({.learning_rate = S(0.125)}, 1300, 700);
  Vector<S> params = Vector<S>::LinSpaced(1300, S(-3), S(5));
  for (int step = 0; step < 3; ++step) {
    const Vector<S> grad = Vector<S>::LinSpaced(1300, S(2), S(-1)) * S(step + 1);
    Vector<S> expected = params;
    for (Index i = 0; i < expected.size(); ++i) expected(i) = params(i) - S(0.125) * grad(i);
    opt.step(params, grad);
    REQUIRE(params == expected);
  }
  CHECK(opt.steps() == 3);
  CHECK(opt.velocity().isZero(0));
}

TEST_CASE("sgd momentum and nesterov follow the unrolled recurrence", "[optim]") {
  const double lr = 0.1;
  const double mu = 0.9;
  const Vector<double> p0 = make_vector({1.0, -2.0});
  const std::vector<Vector<double>> g = {make_vector({0.5, -1.0}), make_vector({0.25, 2.0}),
                                         make_vector({-1.5, 0.75})};
  // v1 = g1, v2 = mu v1 + g2, v3 = mu v2 + g3, written out by hand.
  const Vector<double> v1 = g[0];
  const Vector<double> v2 = mu * g[0] + g[1];
  const Vector<double> v3 = mu * mu * g[0] + mu * g[1] + g[2];

  Vector<double> expected;
  bool nesterov = false;
  SECTION("heavy ball: p -= lr v") { expected = p0 - lr * (v1 + v2 + v3); }
  SECTION("nesterov: p -= lr (g + mu v)") {
    nesterov = true;
    expected = p0 - lr * ((g[0] + mu * v1) + (g[1] + mu * v2) + (g[2] + mu * v3));
  }
  bilevel::sgd<double> opt({.learning_rate = lr, .momentum = mu, .nesterov = nesterov}, 2, 2);
  Vector<double> params = p0;
  for (const auto& grad : g) opt.step(params, grad);
  CHECK(params(0) == Approx(expected(0)).epsilon(1e-14));
  CHECK(params(1) == Approx(expected(1)).epsilon(1e-14));
  CHECK(opt.velocity()(0) == Approx(v3(0)).epsilon(1e-14));
  CHECK(opt.velocity()(1) == Approx(v3(1)).epsilon(1e-14));
}

TEMPLATE_TEST_CASE("sgd weight decay touches only the weight prefix", "[optim]", float, double) {
  using S = TestType;
  const S lr = S(0.5);
  const S wd = S(0.1);
  const S mu = GENERATE(S(0), S(0.9));
  bilevel::sgd<S> opt({.learning_rate = lr, .momentum = mu, .weight_decay = wd}, 5, 3);
  Vector<S> params = make_vector<S>({1, -2, 4, 3, -7});
  const Vector<S> zero = Vector<S>::Zero(5);
  opt.step(params, zero);
  // First step: v = wd * p whatever mu is, so p <- p - lr wd p on the prefix.
  CHECK(params(0) == Approx(S(1) * (1 - lr * wd)));
  CHECK(params(1) == Approx(S(-2) * (1 - lr * wd)));
  CHECK(params(2) == Approx(S(4) * (1 - lr * wd)));
  CHECK(params(3) == S(3));
  CHECK(params(4) == S(-7));
}

TEST_CASE("optimisers reject bad settings with config_error naming the function", "[optim]") {
  using bilevel::config_error;
  using sgd = bilevel::sgd<double>;
  require_throws_with<config_error>([] { sgd({.learning_rate = -1}, 4, 2); },
                                    {"sgd: learning_rate must be > 0, got -1"});
  require_throws_with<config_error>(
      [] { sgd({.learning_rate = std::numeric_limits<double>::infinity()}, 4, 2); },
      {"sgd", "learning_rate", "finite"});
  require_throws_with<config_error>([] { sgd({.momentum = 1}, 4, 2); },
                                    {"sgd", "momentum", "[0, 1)"});
  require_throws_with<config_error>([] { sgd({.momentum = -0.5}, 4, 2); }, {"sgd", "momentum"});
  require_throws_with<config_error>([] { sgd({.nesterov = true}, 4, 2); },
                                    {"sgd", "momentum", "nesterov"});
  require_throws_with<config_error>([] { sgd({.weight_decay = -1e-4}, 4, 2); },
                                    {"sgd", "weight_decay"});
  require_throws_with<config_error>([] { sgd({}, 4, 5); }, {"sgd", "n_decayed", "got 5"});
  require_throws_with<config_error>([] { sgd({}, 4, -1); }, {"sgd", "n_decayed"});
  require_throws_with<config_error>([] { sgd({}, -1, 0); }, {"sgd", "n_params"});
  sgd ok({.momentum = 0.5, .nesterov = true}, 4, 4);
  require_throws_with<config_error>([&] { ok.set_learning_rate(0); },
                                    {"sgd::set_learning_rate", "learning_rate"});
  ok.set_learning_rate(0.25);
  CHECK(ok.learning_rate() == 0.25);

  using adam = bilevel::adam<double>;
  require_throws_with<config_error>([] { adam({.learning_rate = 0}, 3, 1); },
                                    {"adam: learning_rate must be > 0, got 0"});
  require_throws_with<config_error>([] { adam({.beta1 = 1}, 3, 1); }, {"adam", "beta1"});
  require_throws_with<config_error>([] { adam({.beta2 = -0.1}, 3, 1); }, {"adam", "beta2"});
  require_throws_with<config_error>([] { adam({.epsilon = 0}, 3, 1); }, {"adam", "epsilon"});
  require_throws_with<config_error>(
      [] { adam({.weight_decay = std::numeric_limits<double>::quiet_NaN()}, 3, 1); },
      {"adam", "weight_decay"});
  require_throws_with<config_error>([] { adam({}, 3, 4); }, {"adam", "n_decayed"});
  adam ok_adam({}, 3, 1);
  require_throws_with<config_error>([&] { ok_adam.set_learning_rate(-0.5); },
                                    {"adam::set_learning_rate", "learning_rate"});
}

TEST_CASE("optimisers report shape mismatches with shape_error", "[optim]") {
  using bilevel::shape_error;
  Vector<double> params = Vector<double>::Zero(4);
  const Vector<double> short_grad = Vector<double>::Zero(3);
  Vector<double> long_params = Vector<double>::Zero(5);
  const Vector<double> grad = Vector<double>::Zero(4);

  bilevel::sgd<double> s({}, 4, 2);
  require_throws_with<shape_error>([&] { s.step(params, short_grad); },
                                   {"sgd::step", "grad", "4x1", "3x1"});
  require_throws_with<shape_error>([&] { s.step(long_params, grad); }, {"sgd::step", "params"});
  require_throws_with<shape_error>([&] { s.restore(Vector<double>::Zero(3), 1); },
                                   {"sgd::restore", "velocity"});

  bilevel::adam<double> a({}, 4, 2);
  require_throws_with<shape_error>([&] { a.step(params, short_grad); }, {"adam::step", "grad"});
  require_throws_with<shape_error>([&] { a.step(long_params, grad); }, {"adam::step", "params"});
  require_throws_with<shape_error>(
      [&] { a.restore(Vector<double>::Zero(4), Vector<double>::Zero(2), 1); },
      {"adam::restore", "second_moment"});
  // Nothing moved: a rejected step leaves the state alone.
  CHECK(s.steps() == 0);
  CHECK(a.steps() == 0);
}

TEMPLATE_TEST_CASE("adam's first step moves every parameter by lr * sign(g)", "[optim]", float,
                   double) {
  using S = TestType;
  // Bias correction makes m_hat = g and v_hat = g^2 at t = 1, whatever the gradient's scale.
  const S lr = S(0.01);
  bilevel::adam<S> opt({.learning_rate = lr}, 6, 3);
  const Vector<S> p0 = make_vector<S>({0, 1, -1, 2, -3, 0.5});
  const Vector<S> grad = make_vector<S>({1e-2, -5, 100, -1e-3, 3, -0.25});
  Vector<S> params = p0;
  opt.step(params, grad);
  for (Index i = 0; i < 6; ++i) {
    const S moved = p0(i) - params(i);
    CHECK(moved == Approx(lr * (grad(i) > 0 ? S(1) : S(-1))).epsilon(1e-4));
  }
}

TEST_CASE("adam matches a scalar reference loop over 5 steps", "[optim]") {
  const double lr = 0.05, b1 = 0.8, b2 = 0.99, eps = 1e-6, wd = 0.3;
  const Index n = 1100;  // more than two internal blocks, and a prefix that ends inside one
  const Index n_decayed = 700;
  bool decoupled = false;
  double decay = 0;
  SECTION("no weight decay") {}
  SECTION("coupled L2") { decay = wd; }
  SECTION("decoupled (AdamW)") {
    decay = wd;
    decoupled = true;
  }
  bilevel::adam<double> opt({.learning_rate = lr,
                             .beta1 = b1,
                             .beta2 = b2,
                             .epsilon = eps,
                             .weight_decay = decay,
                             .decoupled = decoupled},
                            n, n_decayed);
  Vector<double> params(n);
  for (Index i = 0; i < n; ++i) params(i) = std::sin(0.37 * double(i)) * 2.0;
  std::vector<double> ref(params.data(), params.data() + n);
  std::vector<double> m(n, 0.0), v(n, 0.0);

  for (int t = 1; t <= 5; ++t) {
    Vector<double> grad(n);
    for (Index i = 0; i < n; ++i) grad(i) = std::cos(0.11 * double(i * t)) - 0.2 * double(t);
    opt.step(params, grad);
    for (Index i = 0; i < n; ++i) {
      const bool in_prefix = i < n_decayed;
      double g = grad(i);
      if (in_prefix && !decoupled) g += decay * ref[i];
      if (in_prefix && decoupled) ref[i] -= lr * decay * ref[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      const double m_hat = m[i] / (1 - std::pow(b1, t));
      const double v_hat = v[i] / (1 - std::pow(b2, t));
      ref[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
  double worst = 0;
  for (Index i = 0; i < n; ++i) worst = std::max(worst, std::abs(params(i) - ref[i]));
  CHECK(worst < 1e-12);
  CHECK(opt.steps() == 5);
  // The state the optimiser exposes is the reference's m and v.
  CHECK(std::abs(opt.first_moment()(3) - m[3]) < 1e-12);
  CHECK(std::abs(opt.second_moment()(900) - v[900]) < 1e-12);
}

TEMPLATE_TEST_CASE("adam minimises a convex quadratic", "[optim]", float, double) {
  using S = TestType;
  // f(x) = 1/2 x^T A x with A = B^T B + I symmetric positive definite; grad = A x.
  bilevel::Matrix<S> B(5, 5);
  for (Index i = 0; i < 5; ++i) {
    for (Index j = 0; j < 5; ++j) B(i, j) = S(std::sin(double(3 * i + j + 1)));
  }
  const bilevel::Matrix<S> A = B.transpose() * B + bilevel::Matrix<S>::Identity(5, 5);
  Vector<S> x = make_vector<S>({1, -2, 3, -1, 2});
  const S f0 = x.dot(A * x) / 2;
  bilevel::adam<S> opt({.learning_rate = S(0.01)}, 5, 5);
  for (int step = 0; step < 3000; ++step) {
    const Vector<S> grad = A * x;
    opt.step(x, grad);
  }
  const S f = x.dot(A * x) / 2;
  INFO("f0 = " << f0 << ", f = " << f);
  CHECK(f < S(1e-6) * f0);
  CHECK(x.norm() < S(1e-3));
}

TEMPLATE_TEST_CASE("adam weight decay touches only the weight prefix", "[optim]", float, double) {
  using S = TestType;
  const S lr = S(0.01);
  const S wd = S(0.5);
  const Vector<S> p0 = make_vector<S>({2, -4, 1, 3, -5});
  const Vector<S> zero = Vector<S>::Zero(5);
  Vector<S> params = p0;
  SECTION("decoupled: p <- (1 - lr wd) p on the prefix") {
    bilevel::adam<S> opt({.learning_rate = lr, .weight_decay = wd, .decoupled = true}, 5, 3);
    opt.step(params, zero);
    for (Index i = 0; i < 3; ++i) CHECK(params(i) == Approx(p0(i) * (1 - lr * wd)));
    // The moments never see the decay.
    CHECK(opt.first_moment().isZero(0));
    CHECK(opt.second_moment().isZero(0));
  }
  SECTION("coupled: the gradient wd p moves the prefix by lr against sign(p)") {
    bilevel::adam<S> opt({.learning_rate = lr, .weight_decay = wd}, 5, 3);
    opt.step(params, zero);
    for (Index i = 0; i < 3; ++i) {
      CHECK(params(i) == Approx(p0(i) - lr * (p0(i) > 0 ? 1 : -1)).epsilon(1e-5));
    }
  }
  CHECK(params(3) == p0(3));
  CHECK(params(4) == p0(4));
}

TEST_CASE("optimisers continue identically from restored state", "[optim]") {
  // Checkpoint round trip: a fresh optimiser given the saved state continues bit for bit.
  SECTION("sgd with momentum") {
    bilevel::sgd<float> first({.learning_rate = 0.1f, .momentum = 0.9f}, 2, 1);
    Vector<float> p1 = make_vector({1.0f, -1.0f});
    first.step(p1, make_vector({0.5f, 2.0f}));
    bilevel::sgd<float> second(first.config(), 2, 1);
    second.restore(first.velocity(), first.steps());
    Vector<float> p2 = p1;
    first.step(p1, make_vector({-1.0f, 0.25f}));
    second.step(p2, make_vector({-1.0f, 0.25f}));
    CHECK(p1 == p2);
    CHECK(second.steps() == 2);
    require_throws_with<bilevel::config_error>([&] { second.restore(Vector<float>::Zero(2), -1); },
                                               {"sgd::restore", "steps"});
  }
  SECTION("adam") {
    bilevel::adam<double> first({.learning_rate = 0.1, .weight_decay = 0.01}, 3, 1);
    Vector<double> p1 = make_vector({1.0, 2.0, 3.0});
    first.step(p1, make_vector({0.5, -0.25, 1.0}));
    first.step(p1, make_vector({-0.5, 0.75, 2.0}));
    bilevel::adam<double> second(first.config(), 3, 1);
    // Bias correction depends on t, so the step count must come back too.
    second.restore(first.first_moment(), first.second_moment(), first.steps());
    Vector<double> p2 = p1;
    const Vector<double> g = make_vector({0.1, 0.2, -0.3});
    first.step(p1, g);
    second.step(p2, g);
    CHECK(p1 == p2);
    CHECK(second.steps() == 3);
    require_throws_with<bilevel::config_error>(
        [&] { second.restore(Vector<double>::Zero(3), Vector<double>::Constant(3, -1.0), 0); },
        {"adam::restore", "second_moment"});
    require_throws_with<bilevel::config_error>(
        [&] { second.restore(Vector<double>::Zero(3), Vector<double>::Zero(3), -2); },
        {"adam::restore", "steps"});
  }
}

TEMPLATE_TEST_CASE("learning-rate schedules equal their closed forms", "[optim]", float, double) {
  using S = TestType;
  using schedule = bilevel::lr_schedule<S>;
  const S pi = std::numbers::pi_v<S>;

  const auto flat = schedule::constant(S(0.01));
  CHECK(flat.at(0) == S(0.01));
  CHECK(flat.at(1000) == S(0.01));
  CHECK(flat.describe() == "constant(lr=0.01)");

  const auto steps = schedule::step_decay(S(0.1), 30, S(0.5));
  CHECK(steps.at(0) == S(0.1));
  CHECK(steps.at(29) == S(0.1));
  CHECK(steps.at(30) == Approx(S(0.05)));
  CHECK(steps.at(59) == Approx(S(0.05)));
  CHECK(steps.at(95) == Approx(S(0.1) * S(0.125)));
  CHECK(steps.describe() == "step_decay(lr=0.1, every=30, factor=0.5)");

  const auto cosine = schedule::cosine(S(0.001), 50);
  CHECK(cosine.at(0) == Approx(S(0.001)));
  CHECK(cosine.at(25) == Approx(S(0.0005)));
  CHECK(cosine.at(10) == Approx(S(0.001) * (1 + std::cos(pi * S(10) / S(50))) / 2));
  CHECK(cosine.at(49) > S(0));  // the last training epoch still learns
  CHECK(cosine.at(50) == S(0));
  CHECK(cosine.at(500) == S(0));
  CHECK(cosine.describe() == "cosine(lr=0.001, epochs=50, min=0)");

  const auto with_floor = schedule::cosine(S(0.1), 10, S(0.02));
  CHECK(with_floor.at(5) == Approx(S(0.06)));
  CHECK(with_floor.at(7) == Approx(S(0.02) + S(0.08) * (1 + std::cos(pi * S(0.7))) / 2));
  CHECK(with_floor.at(10) == S(0.02));
  // Monotone non-increasing over the run.
  for (Index e = 1; e <= 12; ++e) CHECK(with_floor.at(e) <= with_floor.at(e - 1));

  CHECK(schedule(steps) == steps);
  CHECK_FALSE(cosine == with_floor);
}

TEST_CASE("schedules reject bad parameters with config_error", "[optim]") {
  using bilevel::config_error;
  using schedule = bilevel::lr_schedule<double>;
  require_throws_with<config_error>([] { schedule::constant(-1); },
                                    {"lr_schedule::constant", "lr", "> 0", "-1"});
  require_throws_with<config_error>([] { schedule::step_decay(0.1, 0, 0.5); },
                                    {"lr_schedule::step_decay", "every_epochs"});
  require_throws_with<config_error>([] { schedule::step_decay(0.1, 10, 1.5); },
                                    {"lr_schedule::step_decay", "factor"});
  require_throws_with<config_error>([] { schedule::step_decay(0.1, 10, 0); },
                                    {"lr_schedule::step_decay", "factor"});
  require_throws_with<config_error>([] { schedule::cosine(0.1, 0); },
                                    {"lr_schedule::cosine", "total_epochs"});
  require_throws_with<config_error>([] { schedule::cosine(0.1, 10, 0.2); },
                                    {"lr_schedule::cosine", "min_lr"});
  require_throws_with<config_error>(
      [] { schedule::cosine(std::numeric_limits<double>::quiet_NaN(), 10); },
      {"lr_schedule::cosine", "lr", "finite"});
  require_throws_with<config_error>([] { (void)schedule::constant(0.1).at(-1); },
                                    {"lr_schedule::at", "epoch"});
}
