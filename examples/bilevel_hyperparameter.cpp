// bilevel_hyperparameter: learns the weight lambda of a ridge regression by gradient descent on
// a validation loss, with the generic bilevel gradients of bilevel/surrogate/bilevel_surrogate.hpp
// (docs/methods.md §4, §5.7):
//
//   inner:  z*(lambda) = argmin_z E(z, lambda) = 1/2 ||A z - b||^2 + lambda/2 ||z||^2   (training)
//   outer:  min_lambda l(z*(lambda)),  l(z) = 1/(2 m) ||A_val z - b_val||^2             (validation)
//
// Each step prints the hypergradient dl/dlambda three ways: the closed form
// -grad l(z*)^T (A^T A + lambda I)^-1 z*, implicit_gradient (conjugate gradients on
// Hessian-vector products) and contrastive_gradient (symmetric, beta = 1e-3), then descends on
// log lambda with the implicit one. At the end it compares the learned lambda with a grid search.
// The problem's closed-form solve() serves the free problems; the clamped problems of the
// contrastive gradient (with the validation loss) are left to the library's gradient descent.

#include <Eigen/Cholesky>
#include <cmath>
#include <cstdio>

#include "bilevel/core/random.hpp"
#include "bilevel/surrogate/bilevel_surrogate.hpp"

namespace {

using bilevel::Index;
using bilevel::Matrix;
using bilevel::Vector;

/// The inner problem, theta = (lambda). Only energy, gradient_z and gradient_theta are required;
/// z_size() lets the library start from z = 0, and the closed-form solve() replaces its gradient
/// descent. Without hvp_zz / hvp_theta_z the library uses finite differences of the gradients.
struct ridge_problem {
  Matrix<double> A;
  Vector<double> b;

  Index z_size() const { return A.cols(); }
  double energy(const Vector<double>& z, const Vector<double>& theta) const {
    return 0.5 * (A * z - b).squaredNorm() + 0.5 * theta(0) * z.squaredNorm();
  }
  void gradient_z(const Vector<double>& z, const Vector<double>& theta, Vector<double>& out) const {
    out = A.transpose() * (A * z - b) + theta(0) * z;
  }
  void gradient_theta(const Vector<double>& z, const Vector<double>&, Vector<double>& out) const {
    out(0) = 0.5 * z.squaredNorm();
  }
  /// z <- argmin_z E(z, theta) + <linear_term, z>.
  void solve(const Vector<double>& theta, const Vector<double>& linear_term,
             Vector<double>& z) const {
    z = hessian(theta(0)).ldlt().solve(A.transpose() * b - linear_term);
  }
  Matrix<double> hessian(double lambda) const {
    return A.transpose() * A + lambda * Matrix<double>::Identity(A.cols(), A.cols());
  }
};

/// The validation loss.
struct validation_loss {
  Matrix<double> A;
  Vector<double> b;
  double value(const Vector<double>& z) const {
    return 0.5 * (A * z - b).squaredNorm() / double(A.rows());
  }
  void gradient(const Vector<double>& z, Vector<double>& out) const {
    out = A.transpose() * (A * z - b) / double(A.rows());
  }
};

Matrix<double> normal_matrix(bilevel::random_source& random, Index rows, Index cols,
                             double scale = 1) {
  Matrix<double> m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) m(i, j) = scale * random.normal();
  return m;
}

}  // namespace

int main() {
  bilevel::random_source random(2024);
  const Index features = 5, train = 8, validation = 40;
  const double noise = 1.5;
  const Vector<double> w_true = normal_matrix(random, features, 1);
  ridge_problem problem;
  problem.A = normal_matrix(random, train, features);
  problem.b = problem.A * w_true + normal_matrix(random, train, 1, noise);
  validation_loss loss;
  loss.A = normal_matrix(random, validation, features);
  loss.b = loss.A * w_true + normal_matrix(random, validation, 1, noise);

  auto closed_form = [&](double lambda) {
    const auto factor = problem.hessian(lambda).ldlt();
    const Vector<double> z = factor.solve(problem.A.transpose() * problem.b);
    Vector<double> g;
    loss.gradient(z, g);
    return -g.dot(factor.solve(z));
  };

  bilevel::surrogate_settings<double> settings;  // z_start = 0 from z_size()
  const double beta = 1e-3, rate = 2.0;
  double lambda = 0.05;
  std::printf("%4s %10s %12s %14s %14s %14s %9s\n", "step", "lambda", "val loss", "closed form",
              "implicit", "contrastive", "CG iters");
  for (int step = 0; step <= 60; ++step) {
    const Vector<double> theta = Vector<double>::Constant(1, lambda);
    const auto implicit = bilevel::implicit_gradient(problem, loss, theta, settings);
    if (!implicit.converged()) {
      std::fprintf(stderr, "the implicit gradient did not converge (CG residual %g)\n",
                   implicit.cg_residual);
      return 1;
    }
    const double hypergradient = implicit.gradient(0);
    if (step % 5 == 0) {
      const auto contrastive =
          bilevel::contrastive_gradient(problem, loss, theta, beta, settings, /*symmetric=*/true);
      std::printf("%4d %10.5f %12.6f %14.6e %14.6e %14.6e %9ld\n", step, lambda, implicit.loss,
                  closed_form(lambda), hypergradient, contrastive.gradient(0),
                  long(implicit.cg_iterations));
    }
    // Gradient descent on log lambda keeps lambda positive: d l / d log(lambda) = lambda dl/dlambda.
    lambda *= std::exp(-rate * lambda * hypergradient);
  }

  // Grid search on the closed-form validation loss, for comparison.
  double best_lambda = 0, best_loss = INFINITY;
  for (int i = 0; i <= 4000; ++i) {
    const double candidate = std::pow(10.0, -3 + 6.0 * i / 4000);
    const Vector<double> z =
        problem.hessian(candidate).ldlt().solve(problem.A.transpose() * problem.b);
    if (loss.value(z) < best_loss) best_loss = loss.value(z), best_lambda = candidate;
  }
  const Vector<double> z = problem.hessian(lambda).ldlt().solve(problem.A.transpose() * problem.b);
  std::printf("learned lambda %.5f (validation loss %.6f); grid search %.5f (%.6f); lambda = 0: %.6f\n",
              lambda, loss.value(z), best_lambda, best_loss,
              loss.value(problem.hessian(0).ldlt().solve(problem.A.transpose() * problem.b)));
  // Success: the hypergradient descent found the grid's minimiser (to 1%).
  return std::abs(lambda - best_lambda) <= 0.01 * best_lambda ? 0 : 1;
}
