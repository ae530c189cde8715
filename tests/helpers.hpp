#pragma once
// Shared test helpers: random programs and batches, central finite differences of the loss.

#include <vector>

#include "bilevel/core/random.hpp"
#include "bilevel/program.hpp"

namespace bilevel::testing {

template <class S>
Matrix<S> random_matrix(random_source& random, Index rows, Index cols, double scale = 1.0) {
  Matrix<S> m(rows, cols);
  for (Index j = 0; j < cols; ++j)
    for (Index i = 0; i < rows; ++i) m(i, j) = S(scale * random.normal());
  return m;
}

/// One-hot columns with random classes.
template <class S>
Matrix<S> random_one_hot(random_source& random, Index classes, Index cols) {
  Matrix<S> y = Matrix<S>::Zero(classes, cols);
  for (Index j = 0; j < cols; ++j) y(Index(random.below(std::uint64_t(classes))), j) = 1;
  return y;
}

template <class Program>
void randomize(Program& net, random_source& random, double scale = 0.7) {
  for (Index i = 0; i < net.parameter_count(); ++i) net.parameters()(i) = scale * random.normal();
}

/// Batch-mean loss of the program at its current parameters.
template <class Program>
double mean_loss(const Program& net, const Matrix<typename Program::scalar_type>& x,
                 const Matrix<typename Program::scalar_type>& y) {
  forward_state<typename Program::scalar_type> state;
  net.forward(x, state);
  return double(net.loss_values(state.z.back(), y).mean());
}

/// Central finite differences of the batch-mean loss in every parameter.
template <class Program>
Vector<double> finite_difference_gradient(Program net, const Matrix<double>& x,
                                          const Matrix<double>& y, double step = 1e-6) {
  Vector<double> gradient(net.parameter_count());
  for (Index i = 0; i < net.parameter_count(); ++i) {
    const double saved = net.parameters()(i);
    net.parameters()(i) = saved + step;
    const double plus = mean_loss(net, x, y);
    net.parameters()(i) = saved - step;
    const double minus = mean_loss(net, x, y);
    net.parameters()(i) = saved;
    gradient(i) = (plus - minus) / (2 * step);
  }
  return gradient;
}

inline double relative_error(const Vector<double>& actual, const Vector<double>& expected) {
  return (actual - expected).norm() / expected.norm();
}

}  // namespace bilevel::testing
