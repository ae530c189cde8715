// The generic bilevel surrogates (docs/methods.md §4, §5.7): the closed form of one identity layer,
// the hypergradient of a ridge weight (implicit differentiation, contrastive limits and their
// rates, with and without the problem's own solvers and Hessian-vector products), the finite-beta
// gradient against finite differences of L_beta, the §4 bounds, and the errors.

#include <Eigen/Cholesky>
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "bilevel/activations/tanh.hpp"
#include "bilevel/couplings/fenchel.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/surrogate/bilevel_surrogate.hpp"
#include "bilevel/surrogate/program_problem.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

/// l(z) = 1/2 ||z - target||^2.
struct squared_distance {
  Vector<double> target;
  double value(const Vector<double>& z) const { return 0.5 * (z - target).squaredNorm(); }
  void gradient(const Vector<double>& z, Vector<double>& out) const { out = z - target; }
};

/// l(z) = sum log cosh(z_i - target_i): convex, smooth, not quadratic.
double log_cosh(double x) {
  const double a = std::abs(x);
  return a + std::log1p(std::exp(-2 * a)) - std::log(2.0);
}
struct log_cosh_loss {
  Vector<double> target;
  double value(const Vector<double>& z) const {
    double sum = 0;
    for (Index i = 0; i < z.size(); ++i) sum += log_cosh(z(i) - target(i));
    return sum;
  }
  void gradient(const Vector<double>& z, Vector<double>& out) const {
    out = (z - target).array().tanh().matrix();
  }
};

/// One identity layer a = W x with the Fenchel coupling E = 1/2 ||z - a||^2; theta = vec(W),
/// column-major (docs/methods.md §4).
struct identity_layer {
  Vector<double> x;
  Index outputs;
  Index z_size() const { return outputs; }
  Index theta_size() const { return outputs * x.size(); }
  Vector<double> a(const Vector<double>& theta) const {
    return ConstMatrixMap<double>(theta.data(), outputs, x.size()) * x;
  }
  double energy(const Vector<double>& z, const Vector<double>& theta) const {
    return 0.5 * (z - a(theta)).squaredNorm();
  }
  void gradient_z(const Vector<double>& z, const Vector<double>& theta, Vector<double>& out) const {
    out = z - a(theta);
  }
  void gradient_theta(const Vector<double>& z, const Vector<double>& theta,
                      Vector<double>& out) const {
    MatrixMap<double>(out.data(), outputs, x.size()) = (a(theta) - z) * x.transpose();
  }
};

/// Ridge least squares E(z, lambda) = 1/2 ||A z - b||^2 + lambda/2 ||z||^2, theta = (lambda),
/// optionally with its own solvers (both forms) and Hessian-vector products.
template <bool Solver, bool Hessian>
struct ridge {
  Matrix<double> A;
  Vector<double> b;
  Matrix<double> system(double shift) const {
    return A.transpose() * A + shift * Matrix<double>::Identity(A.cols(), A.cols());
  }
  double energy(const Vector<double>& z, const Vector<double>& theta) const {
    return 0.5 * (A * z - b).squaredNorm() + 0.5 * theta(0) * z.squaredNorm();
  }
  void gradient_z(const Vector<double>& z, const Vector<double>& theta, Vector<double>& out) const {
    out = A.transpose() * (A * z - b) + theta(0) * z;
  }
  void gradient_theta(const Vector<double>& z, const Vector<double>&, Vector<double>& out) const {
    out.resize(1);
    out(0) = 0.5 * z.squaredNorm();
  }
  void solve(const Vector<double>& theta, const Vector<double>& linear_term, Vector<double>& z) const
    requires Solver
  {
    z = system(theta(0)).ldlt().solve(A.transpose() * b - linear_term);
  }
  void solve(const Vector<double>& theta, const squared_distance& loss, double weight,
             Vector<double>& z) const
    requires Solver
  {
    z = system(theta(0) + weight).ldlt().solve(A.transpose() * b + weight * loss.target);
  }
  void hvp_zz(const Vector<double>&, const Vector<double>& theta, const Vector<double>& v,
              Vector<double>& out) const
    requires Hessian
  {
    out = A.transpose() * (A * v) + theta(0) * v;
  }
  void hvp_theta_z(const Vector<double>& z, const Vector<double>&, const Vector<double>& v,
                   Vector<double>& out) const
    requires Hessian
  {
    out.resize(1);
    out(0) = z.dot(v);
  }
};

/// A smooth non-quadratic inner problem, lambda-strongly convex in z:
/// E(z, theta) = 1/2 ||A z - b||^2 + lambda/2 ||z||^2 + sum log cosh(z_i), theta = (lambda, b).
struct smooth_problem {
  Matrix<double> A;
  double energy(const Vector<double>& z, const Vector<double>& theta) const {
    double sum = 0;
    for (Index i = 0; i < z.size(); ++i) sum += log_cosh(z(i));
    return 0.5 * (A * z - theta.tail(A.rows())).squaredNorm() + 0.5 * theta(0) * z.squaredNorm() +
           sum;
  }
  void gradient_z(const Vector<double>& z, const Vector<double>& theta, Vector<double>& out) const {
    out = A.transpose() * (A * z - theta.tail(A.rows())) + theta(0) * z +
          z.array().tanh().matrix();
  }
  void gradient_theta(const Vector<double>& z, const Vector<double>& theta,
                      Vector<double>& out) const {
    out(0) = 0.5 * z.squaredNorm();
    out.tail(A.rows()) = theta.tail(A.rows()) - A * z;
  }
};

struct ridge_instance {
  Matrix<double> A;
  Vector<double> b, target;
  double lambda = 0.5;
  explicit ridge_instance(std::uint64_t seed) {
    random_source random(seed);
    A = random_matrix<double>(random, 8, 5);
    b = random_matrix<double>(random, 8, 1);
    target = random_matrix<double>(random, 5, 1);
  }
  template <bool Solver, bool Hessian>
  ridge<Solver, Hessian> problem() const {
    return {A, b};
  }
  Vector<double> theta() const { return Vector<double>::Constant(1, lambda); }
  /// dl/dlambda = -grad l(z*)^T (A^T A + lambda I)^-1 z*.
  double hypergradient() const {
    const Matrix<double> H =
        A.transpose() * A + lambda * Matrix<double>::Identity(A.cols(), A.cols());
    const Vector<double> z = H.ldlt().solve(A.transpose() * b);
    return -(z - target).dot(H.ldlt().solve(z));
  }
};

surrogate_settings<double> tight_settings(Index n) {
  surrogate_settings<double> settings;
  settings.z_start = Vector<double>::Zero(n);
  settings.inner.tolerance = 1e-13;
  settings.inner.max_iterations = 100000;
  return settings;
}

double slope(double error_large, double error_small, double ratio) {
  return std::log10(error_large / error_small) / std::log10(ratio);
}

}  // namespace

TEST_CASE("surrogate: one identity layer has the closed form of METHODS §4", "[surrogate]") {
  random_source random(3);
  const identity_layer layer{random_matrix<double>(random, 4, 1), 3};
  const Matrix<double> W = random_matrix<double>(random, 3, 4);
  const Vector<double> theta = W.reshaped();
  const squared_distance loss{random_matrix<double>(random, 3, 1)};
  const Vector<double> a = W * layer.x, y = loss.target;
  surrogate_settings<double> settings;  // z_start from z_size(): zeros
  settings.inner.tolerance = 1e-13;

  for (const double beta : {1e-3, 0.1, 0.5, 1.0, 4.0}) {
    CAPTURE(beta);
    const auto result = contrastive_gradient(layer, loss, theta, beta, settings);
    REQUIRE(result.converged());
    CHECK_FALSE(result.free.problem_solver);
    CHECK((result.z_free - a).norm() < 1e-12);
    CHECK((result.z_clamped - (a + beta * y) / (1 + beta)).norm() < 1e-12);
    const Matrix<double> expected = (a - y) * layer.x.transpose() / (1 + beta);
    CHECK(relative_error(result.gradient, expected.reshaped()) < 1e-10);
    // L_beta = ||a - y||^2 / (2 (1 + beta)), whose W-gradient is the one above.
    CHECK(result.surrogate == Approx((a - y).squaredNorm() / (2 * (1 + beta))).epsilon(1e-10));
    // The §4 lower bound (mu = 1, g = a - y) is attained up to a factor 1 / (1 + beta):
    // (l(z^0) - L_beta) / (beta/2 ||g||^2) = 1 / (1 + beta).
    CHECK(result.loss_free == Approx(0.5 * (a - y).squaredNorm()));
    CHECK((result.loss_free - result.surrogate) / (beta / 2 * (a - y).squaredNorm()) ==
          Approx(1 / (1 + beta)).epsilon(1e-8));

    // Linearised surrogate: z^beta = a - beta (a - y), the gradient is BP's for every beta.
    settings.linearised = true;
    const auto linear = contrastive_gradient(layer, loss, theta, beta, settings);
    settings.linearised = false;
    CHECK((linear.z_clamped - (a - beta * (a - y))).norm() < 1e-12);
    const Matrix<double> bp = (a - y) * layer.x.transpose();
    CHECK(relative_error(linear.gradient, bp.reshaped()) < 1e-10);
  }
  const auto implicit = implicit_gradient(layer, loss, theta, settings);
  REQUIRE(implicit.converged());
  const Matrix<double> bp = (a - y) * layer.x.transpose();
  CHECK(relative_error(implicit.gradient, bp.reshaped()) < 1e-8);
  CHECK(implicit.loss == Approx(0.5 * (a - y).squaredNorm()));
}

TEST_CASE("surrogate: implicit hypergradient of a ridge weight matches the closed form",
          "[surrogate]") {
  for (const std::uint64_t seed : {1u, 2u, 3u}) {
    const ridge_instance instance(seed);
    const squared_distance loss{instance.target};
    const Vector<double> expected = Vector<double>::Constant(1, instance.hypergradient());
    const auto settings = tight_settings(5);
    CAPTURE(seed, expected(0));

    // The problem's own solver and HVPs, then each fallback in turn.
    const auto exact = implicit_gradient(instance.problem<true, true>(), loss, instance.theta(), settings);
    const auto no_hvp = implicit_gradient(instance.problem<true, false>(), loss, instance.theta(), settings);
    const auto no_solver = implicit_gradient(instance.problem<false, true>(), loss, instance.theta(), settings);
    const auto fallbacks = implicit_gradient(instance.problem<false, false>(), loss, instance.theta(), settings);
    for (const auto* result : {&exact, &no_hvp, &no_solver, &fallbacks}) {
      CAPTURE(result->gradient(0), result->cg_residual, result->cg_iterations,
              result->inner.residual, result->inner.iterations);
      CHECK(result->converged());
      CHECK(relative_error(result->gradient, expected) < 1e-8);
    }
    CHECK(exact.inner.problem_solver);
    CHECK(exact.inner.iterations == 0);
    CHECK_FALSE(fallbacks.inner.problem_solver);
    CHECK(fallbacks.inner.iterations > 0);
    CHECK(exact.cg_iterations <= 5);
    CHECK(exact.cg_residual < 1e-12);
    // v solves H v = grad l(z*).
    const Matrix<double> H = instance.problem<true, true>().system(instance.lambda);
    CHECK((H * exact.adjoint - (exact.z - instance.target)).norm() < 1e-10);
  }
}

TEST_CASE("surrogate: contrastive gradients tend to the hypergradient at rate beta (symmetric beta^2)",
          "[surrogate]") {
  const ridge_instance instance(4);
  const squared_distance loss{instance.target};
  const double expected = instance.hypergradient();
  auto settings = tight_settings(5);
  const std::vector<double> betas = {1e-1, 1e-2, 1e-3};

  // error(beta) for each variant; `fallback` runs the library's descent instead of the solvers.
  auto errors = [&](bool fallback, bool symmetric, bool linearised) {
    settings.linearised = linearised;
    std::vector<double> out;
    for (const double beta : betas) {
      const auto result =
          fallback ? contrastive_gradient(instance.problem<false, false>(), loss, instance.theta(),
                                          beta, settings, symmetric)
                   : contrastive_gradient(instance.problem<true, false>(), loss, instance.theta(),
                                          beta, settings, symmetric);
      REQUIRE(result.converged());
      CHECK(result.clamped.problem_solver == !fallback);
      out.push_back(std::abs(result.gradient(0) - expected) / std::abs(expected));
    }
    return out;
  };
  for (const bool fallback : {false, true}) {
    CAPTURE(fallback);
    const auto one_sided = errors(fallback, false, false);
    const auto symmetric = errors(fallback, true, false);
    const auto linearised = errors(fallback, false, true);
    const auto linearised_symmetric = errors(fallback, true, true);
    CAPTURE(one_sided, symmetric, linearised, linearised_symmetric);
    CHECK(one_sided[2] < 1e-2);
    CHECK(slope(one_sided[0], one_sided[2], 100) == Approx(1).margin(0.1));
    CHECK(symmetric[2] < 1e-4);
    CHECK(slope(symmetric[0], symmetric[2], 100) == Approx(2).margin(0.15));
    CHECK(slope(linearised[0], linearised[2], 100) == Approx(1).margin(0.1));
    // E is quadratic in z, so the linearised clamped point is z^0 -+ beta H^-1 g exactly and the
    // symmetric linearised estimate is the hypergradient itself.
    CHECK(linearised_symmetric[0] < 1e-9);
  }

  // The fallbacks give the problem's-solver answers, at every beta and variant.
  for (const double beta : betas)
    for (const bool symmetric : {false, true}) {
      settings.linearised = false;
      const auto own = contrastive_gradient(instance.problem<true, true>(), loss, instance.theta(),
                                            beta, settings, symmetric);
      const auto library = contrastive_gradient(instance.problem<false, false>(), loss,
                                                instance.theta(), beta, settings, symmetric);
      CAPTURE(beta, symmetric, own.gradient(0), library.gradient(0));
      CHECK(relative_error(library.gradient, own.gradient) < 1e-8);
      CHECK(library.surrogate == Approx(own.surrogate).epsilon(1e-10));
      CHECK((library.z_clamped - own.z_clamped).norm() < 1e-11);
    }
}

TEST_CASE("surrogate: the finite-beta gradient is the derivative of L_beta", "[surrogate]") {
  random_source random(11);
  const smooth_problem problem{random_matrix<double>(random, 8, 5)};
  Vector<double> theta(9);
  theta(0) = 0.3;
  theta.tail(8) = random_matrix<double>(random, 8, 1);
  const log_cosh_loss loss{random_matrix<double>(random, 5, 1)};
  auto settings = tight_settings(5);
  settings.inner.tolerance = 1e-12;
  const double beta = 0.5, h = 1e-5;

  for (const bool symmetric : {false, true}) {
    CAPTURE(symmetric);
    const auto result = contrastive_gradient(problem, loss, theta, beta, settings, symmetric);
    REQUIRE(result.converged());
    Vector<double> numeric(theta.size());
    for (Index i = 0; i < theta.size(); ++i) {
      Vector<double> shifted = theta;
      shifted(i) = theta(i) + h;
      const double plus = contrastive_gradient(problem, loss, shifted, beta, settings, symmetric).surrogate;
      shifted(i) = theta(i) - h;
      const double minus = contrastive_gradient(problem, loss, shifted, beta, settings, symmetric).surrogate;
      numeric(i) = (plus - minus) / (2 * h);
    }
    CAPTURE(result.gradient.transpose(), numeric.transpose());
    CHECK(relative_error(result.gradient, numeric) < 1e-7);
  }
  // And the implicit gradient (FD Hessian-vector products here) is the beta -> 0 limit.
  const auto implicit = implicit_gradient(problem, loss, theta, settings);
  REQUIRE(implicit.converged());
  const auto small = contrastive_gradient(problem, loss, theta, 1e-4, settings, true);
  CHECK(relative_error(small.gradient, implicit.gradient) < 1e-6);
}

TEST_CASE("surrogate: METHODS §4 bounds for convex l and strongly convex E", "[surrogate]") {
  // l(z^0) - beta / (2 mu) ||g||^2 <= L_beta <= l(z^0), g = grad l(z^0), mu = lambda.
  random_source random(5);
  auto settings = tight_settings(5);
  settings.inner.tolerance = 1e-12;
  for (int instance = 0; instance < 10; ++instance) {
    const smooth_problem problem{random_matrix<double>(random, 8, 5)};
    Vector<double> theta(9);
    const double mu = random.uniform(0.05, 2.0);
    theta(0) = mu;
    theta.tail(8) = random_matrix<double>(random, 8, 1, 2.0);
    const log_cosh_loss smooth{random_matrix<double>(random, 5, 1, 2.0)};
    const squared_distance quadratic{random_matrix<double>(random, 5, 1, 2.0)};
    for (const double beta : {0.01, 0.3, 1.0, 10.0}) {
      auto check = [&](const auto& loss) {
        const auto result = contrastive_gradient(problem, loss, theta, beta, settings);
        REQUIRE(result.converged());
        Vector<double> g;
        loss.gradient(result.z_free, g);
        const double upper = result.loss_free;
        const double lower = upper - beta / (2 * mu) * g.squaredNorm();
        const double slack = 1e-10 * (1 + std::abs(upper));
        CAPTURE(instance, beta, lower, result.surrogate, upper);
        CHECK(lower - slack <= result.surrogate);
        CHECK(result.surrogate <= upper + slack);
      };
      check(smooth);
      check(quadratic);
    }
  }
}

TEST_CASE("surrogate: solver reports show which solver ran and whether it converged",
          "[surrogate]") {
  STATIC_REQUIRE(InnerProblem<ridge<false, false>, double>);
  STATIC_REQUIRE(InnerProblem<identity_layer, double>);
  STATIC_REQUIRE_FALSE(InnerProblem<squared_distance, double>);
  STATIC_REQUIRE(BilevelLoss<squared_distance, double>);
  STATIC_REQUIRE_FALSE(BilevelLoss<identity_layer, double>);
  STATIC_REQUIRE(HasLinearTermSolver<ridge<true, false>, double>);
  STATIC_REQUIRE(HasClampedSolver<ridge<true, false>, squared_distance, double>);
  STATIC_REQUIRE_FALSE(HasClampedSolver<ridge<true, false>, log_cosh_loss, double>);
  STATIC_REQUIRE_FALSE(HasLinearTermSolver<ridge<false, true>, double>);
  STATIC_REQUIRE(HasHessianVectorProduct<ridge<false, true>, double>);
  STATIC_REQUIRE_FALSE(HasMixedHessianVectorProduct<ridge<true, false>, double>);

  const ridge_instance instance(7);
  const squared_distance loss{instance.target};
  const log_cosh_loss other{instance.target};
  auto settings = tight_settings(5);

  // The problem's solvers: no iterations, residual at rounding level.
  const auto own = contrastive_gradient(instance.problem<true, true>(), loss, instance.theta(), 0.1,
                                        settings, true);
  CHECK(own.free.problem_solver);
  CHECK(own.clamped.problem_solver);
  CHECK(own.negative.problem_solver);
  CHECK(own.clamped.iterations == 0);
  CHECK(own.clamped.residual < 1e-13);
  CHECK(own.z_negative.size() == 5);

  // A loss the clamped solver does not accept: the free problem by the problem's solver, the
  // clamped one by descent.
  const auto mixed = contrastive_gradient(instance.problem<true, true>(), other, instance.theta(),
                                          0.1, settings);
  CHECK(mixed.free.problem_solver);
  CHECK_FALSE(mixed.clamped.problem_solver);
  CHECK(mixed.clamped.iterations > 0);
  CHECK(mixed.converged());
  CHECK(mixed.z_negative.size() == 0);

  // Too few iterations: reported, not hidden.
  settings.inner.max_iterations = 2;
  const auto cut = contrastive_gradient(instance.problem<false, false>(), loss, instance.theta(),
                                        0.1, settings);
  CHECK(cut.free.iterations == 2);
  CHECK_FALSE(cut.free.converged);
  CHECK_FALSE(cut.converged());
  CHECK(cut.free.residual > settings.inner.tolerance);
  settings.inner.max_iterations = 100000;
  settings.cg.max_iterations = 1;
  const auto short_cg = implicit_gradient(instance.problem<true, true>(), loss, instance.theta(), settings);
  CHECK(short_cg.cg_iterations == 1);
  CHECK_FALSE(short_cg.cg_converged);
  CHECK(short_cg.cg_residual > 1e-6);
}

TEST_CASE("surrogate: bad beta and settings are config errors", "[surrogate]") {
  const ridge_instance instance(8);
  const auto problem = instance.problem<false, false>();
  const squared_distance loss{instance.target};
  const Vector<double> theta = instance.theta();
  const auto settings = tight_settings(5);
  using Catch::Matchers::Contains;

  for (const double beta : {0.0, -0.5, std::numeric_limits<double>::quiet_NaN(),
                            std::numeric_limits<double>::infinity()}) {
    CAPTURE(beta);
    CHECK_THROWS_AS(contrastive_gradient(problem, loss, theta, beta, settings), config_error);
    CHECK_THROWS_WITH(contrastive_gradient(problem, loss, theta, beta, settings, true),
                      Contains("contrastive_gradient") && Contains("beta"));
  }
  auto bad = settings;
  bad.inner.tolerance = -1;
  CHECK_THROWS_AS(implicit_gradient(problem, loss, theta, bad), config_error);
  CHECK_THROWS_WITH(implicit_gradient(problem, loss, theta, bad),
                    Contains("implicit_gradient") && Contains("settings.inner.tolerance"));
  bad = settings;
  bad.inner.armijo = 0.7;
  CHECK_THROWS_AS(contrastive_gradient(problem, loss, theta, 0.1, bad), config_error);
  bad = settings;
  bad.cg.tolerance = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH(implicit_gradient(problem, loss, theta, bad), Contains("settings.cg.tolerance"));
  bad = settings;
  bad.fd_step = 0;
  CHECK_THROWS_AS(implicit_gradient(problem, loss, theta, bad), config_error);
  // No starting point and no z_size(): the size of z is unknown.
  bad = settings;
  bad.z_start.resize(0);
  CHECK_THROWS_WITH(contrastive_gradient(problem, loss, theta, 0.1, bad),
                    Contains("contrastive_gradient") && Contains("z_start"));
  // Non-finite inputs.
  Vector<double> nan_theta = theta;
  nan_theta(0) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(implicit_gradient(problem, loss, nan_theta, settings), numeric_error);
}

namespace {
/// Returns a gradient in theta of the wrong size.
struct wrong_theta_gradient {
  double energy(const Vector<double>& z, const Vector<double>&) const { return 0.5 * z.squaredNorm(); }
  void gradient_z(const Vector<double>& z, const Vector<double>&, Vector<double>& out) const { out = z; }
  void gradient_theta(const Vector<double>&, const Vector<double>&, Vector<double>& out) const {
    out = Vector<double>::Zero(2);
  }
};
/// Returns a gradient of the wrong size.
struct wrong_loss_gradient {
  double value(const Vector<double>&) const { return 0; }
  void gradient(const Vector<double>&, Vector<double>& out) const { out = Vector<double>::Ones(5); }
};
/// Its own solver returns a z of the wrong size.
struct wrong_solver : wrong_theta_gradient {
  void solve(const Vector<double>&, const Vector<double>&, Vector<double>& z) const {
    z = Vector<double>::Zero(3);
  }
};
}  // namespace

TEST_CASE("surrogate: shape mismatches are shape errors naming the function", "[surrogate]") {
  random_source random(9);
  const identity_layer layer{random_matrix<double>(random, 4, 1), 3};
  const squared_distance loss{random_matrix<double>(random, 3, 1)};
  const Vector<double> theta = random_matrix<double>(random, 12, 1);
  surrogate_settings<double> settings;
  using Catch::Matchers::Contains;

  settings.z_start = Vector<double>::Zero(4);  // z_size() is 3
  CHECK_THROWS_AS(contrastive_gradient(layer, loss, theta, 0.1, settings), shape_error);
  CHECK_THROWS_WITH(contrastive_gradient(layer, loss, theta, 0.1, settings),
                    Contains("contrastive_gradient") && Contains("z_start must be 3x1, got 4x1"));
  settings.z_start.resize(0);
  const Vector<double> short_theta = theta.head(11);  // theta_size() is 12
  CHECK_THROWS_WITH(implicit_gradient(layer, loss, short_theta, settings),
                    Contains("implicit_gradient") && Contains("theta must be 12x1, got 11x1"));

  // A loss whose gradient has the wrong size.
  CHECK_THROWS_WITH(implicit_gradient(layer, wrong_loss_gradient{}, theta, settings),
                    Contains("implicit_gradient") && Contains("loss gradient must be 3x1, got 5x1"));

  // What the user's members return is checked too.
  settings.z_start = Vector<double>::Zero(4);
  const squared_distance loss4{Vector<double>::Ones(4)};
  CHECK_THROWS_WITH(contrastive_gradient(wrong_theta_gradient{}, loss4, theta.head(3).eval(), 0.1, settings),
                    Contains("contrastive_gradient") && Contains("gradient_theta must be 3x1, got 2x1"));
  CHECK_THROWS_WITH(implicit_gradient(wrong_solver{}, loss4, theta.head(2).eval(), settings),
                    Contains("implicit_gradient") && Contains("z returned by the problem's solve"));
}

namespace {

/// A 3-4-3-2 tanh MLP (softmax cross-entropy on logits) with random parameters, one sample.
struct program_case {
  mlp<double, tanh_pair> net = make_mlp<double, tanh_pair>({3, 4, 3, 2});
  Matrix<double> x, y;
  program_case() {
    random_source random(12);
    randomize(net, random, 0.8);
    x = random_matrix<double>(random, 3, 1);
    y = random_one_hot<double>(random, 2, 1);
  }
  Vector<double> bp_gradient() {
    bp<double> method;
    Vector<double> gradient;
    method.gradient(net, x, y, gradient);
    return gradient;
  }
};

}  // namespace

TEMPLATE_TEST_CASE("surrogate: a program's energy derivatives equal finite differences",
                   "[surrogate]", penalizer_coupling, fenchel_coupling) {
  program_case c;
  const program_problem<mlp<double, tanh_pair>, TestType> problem(c.net, c.x);
  REQUIRE(problem.z_size() == 4 + 3 + 2);
  REQUIRE(problem.theta_size() == c.net.parameter_count());
  // Away from the forward pass, where every term of the gradients is non-zero; states inside
  // tanh's range (-1, 1), where the Fenchel coupling is finite.
  random_source random(5);
  Vector<double> z = problem.forward_states(c.net.parameters());
  for (Index i = 0; i < z.size(); ++i) z(i) = 0.8 * z(i) + 0.1 * random.uniform(-1, 1);
  const Vector<double>& theta = c.net.parameters();
  Vector<double> gz, gtheta;
  problem.gradient_z(z, theta, gz);
  problem.gradient_theta(z, theta, gtheta);
  const double h = 1e-6;
  Vector<double> fd_z(z.size()), fd_theta(theta.size());
  for (Index i = 0; i < z.size(); ++i) {
    Vector<double> plus = z, minus = z;
    plus(i) += h;
    minus(i) -= h;
    fd_z(i) = (problem.energy(plus, theta) - problem.energy(minus, theta)) / (2 * h);
  }
  for (Index i = 0; i < theta.size(); ++i) {
    Vector<double> plus = theta, minus = theta;
    plus(i) += h;
    minus(i) -= h;
    fd_theta(i) = (problem.energy(z, plus) - problem.energy(z, minus)) / (2 * h);
  }
  CHECK(relative_error(gz, fd_z) < 1e-7);
  CHECK(relative_error(gtheta, fd_theta) < 1e-7);
  // The forward pass is the free minimiser: E = 0 and no gradient there.
  const Vector<double> forward = problem.forward_states(theta);
  CHECK(std::abs(problem.energy(forward, theta)) < 1e-14);
  problem.gradient_z(forward, theta, gz);
  CHECK(gz.norm() < 1e-14);
}

TEST_CASE("surrogate: on a program, the implicit gradient is BP's and the contrastive ones "
          "tend to it", "[surrogate]") {
  program_case c;
  const program_problem problem(c.net, c.x);
  const program_loss loss(c.net, c.y);
  const Vector<double> bp_gradient = c.bp_gradient();
  surrogate_settings<double> settings;
  settings.z_start = problem.forward_states(c.net.parameters());
  // The symmetric estimate's O(beta^2) at beta 1e-3 is below what a residual of 1e-10 leaves.
  settings.inner.tolerance = 1e-13;

  const implicit_result<double> implicit =
      implicit_gradient(problem, loss, c.net.parameters(), settings);
  REQUIRE(implicit.converged());
  CHECK(implicit.loss == Approx(double(c.net.loss_values(implicit.z.tail(2), c.y)(0))));
  CHECK(relative_error(implicit.gradient, bp_gradient) < 1e-7);

  // One-sided: error O(beta); symmetric: O(beta^2) (docs/methods.md §4).
  std::vector<double> one_sided, symmetric;
  for (const double beta : {1e-2, 1e-3}) {
    for (const bool both : {false, true}) {
      const contrastive_result<double> result =
          contrastive_gradient(problem, loss, c.net.parameters(), beta, settings, both);
      REQUIRE(result.converged());
      (both ? symmetric : one_sided).push_back(relative_error(result.gradient, bp_gradient));
    }
  }
  CAPTURE(one_sided, symmetric);
  CHECK(one_sided[1] < one_sided[0] / 5);  // a tenth of beta, about a tenth of the error
  CHECK(one_sided[1] < 1e-2);
  CHECK(symmetric[1] < symmetric[0] / 50);  // about a hundredth
  CHECK(symmetric[1] < 1e-6);
}

TEST_CASE("surrogate: program adapters refuse samples and targets of the wrong shape",
          "[surrogate][reliability]") {
  program_case c;
  using problem_type = program_problem<mlp<double, tanh_pair>>;
  CHECK_THROWS_WITH(problem_type(c.net, Matrix<double>::Zero(3, 2)),
                    Catch::Contains("program_problem") && Catch::Contains("x"));
  CHECK_THROWS_AS(program_loss(c.net, Matrix<double>::Zero(3, 1)), shape_error);
  const problem_type problem(c.net, c.x);
  Vector<double> out;
  CHECK_THROWS_WITH(problem.gradient_z(Vector<double>::Zero(5), c.net.parameters(), out),
                    Catch::Contains("program_problem::gradient_z") && Catch::Contains("z"));
  CHECK_THROWS_AS(problem.energy(Vector<double>::Zero(9), Vector<double>::Zero(3)), shape_error);
}
