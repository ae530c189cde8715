#pragma once
// Shared test helpers: random programs and batches, central finite differences of the loss.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "bilevel/core/random.hpp"
#include "bilevel/program.hpp"

namespace bilevel::testing {

/// A fresh directory under the system temp dir, named `prefix` and random digits, removed with
/// everything in it when the test case ends (pass or fail).
class scratch_directory {
 public:
  explicit scratch_directory(const std::string& prefix) {
    std::random_device entropy;
    path = std::filesystem::temp_directory_path() /
           (prefix + std::to_string(entropy()) + "-" + std::to_string(entropy()));
    std::filesystem::create_directories(path);
  }
  ~scratch_directory() {
    std::error_code ignored;  // a test may have taken its permissions away
    std::filesystem::permissions(path, std::filesystem::perms::owner_all, ignored);
    std::filesystem::remove_all(path, ignored);
  }
  scratch_directory(const scratch_directory&) = delete;
  scratch_directory& operator=(const scratch_directory&) = delete;
  std::filesystem::path operator/(const std::string& name) const { return path / name; }

  std::filesystem::path path;
};

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

/// Three Gaussian blobs in 4 dimensions with standard deviation `spread`, one-hot targets
/// (linearly separable for small spreads).
inline void blobs(random_source& random, Index count, double spread, Matrix<double>& x,
                  Matrix<double>& y) {
  const double centres[3][4] = {{2, 0, 0, 1}, {0, 2, -1, 0}, {-1, -1, 2, -1}};
  x.resize(4, count);
  y.setZero(3, count);
  for (Index j = 0; j < count; ++j) {
    const auto c = Index(random.below(3));
    for (Index i = 0; i < 4; ++i) x(i, j) = centres[c][i] + spread * random.normal();
    y(c, j) = 1;
  }
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

/// What batch_dependence measured.
struct batch_dependence_result {
  bool batch_converged = false;
  double largest = 0;  ///< largest relative distance of a sample's state alone from its batch column
  Index fewest_sweeps = 0, most_sweeps = 0;  ///< over the lone solves
};

/// For an inner solver that retires its converged samples (active set): 9 samples of growing
/// size, so that they converge at different sweeps, through a 5-7-6-3 program of `Pair` drawn
/// from `seed`, solved as one batch by a method from make() and each alone by a fresh one. The
/// distance between a sample's state alone (state_of(method), layers 1..L) and its column of
/// the batch's state is taken relative to the state's norm; `largest` is the largest over
/// samples and layers.
template <class Pair, class Make, class StateOf>
batch_dependence_result batch_dependence(std::uint64_t seed, Make make, StateOf state_of) {
  random_source random(seed);
  auto net = make_mlp<double, Pair>({5, 7, 6, 3});
  randomize(net, random, 0.8);
  Matrix<double> x = random_matrix<double>(random, 5, 9);
  for (Index j = 0; j < x.cols(); ++j) x.col(j) *= 0.3 * double(j + 1);
  const Matrix<double> y = random_one_hot<double>(random, 3, 9);
  batch_dependence_result result;
  auto batch = make();
  Vector<double> gradient;
  result.batch_converged = batch.gradient(net, x, y, gradient).converged();
  const std::vector<Matrix<double>>& batch_state = state_of(batch);
  std::vector<Index> sweeps;
  for (Index j = 0; j < x.cols(); ++j) {
    auto method = make();
    const Matrix<double> xj = x.col(j), yj = y.col(j);
    sweeps.push_back(method.gradient(net, xj, yj, gradient).inner_iterations);
    const std::vector<Matrix<double>>& alone = state_of(method);
    for (std::size_t k = 1; k < alone.size(); ++k) {
      const double distance = (batch_state[k].col(j) - alone[k].col(0)).norm();
      result.largest = std::max(result.largest, distance / std::max(alone[k].norm(), 1e-300));
    }
  }
  result.fewest_sweeps = *std::min_element(sweeps.begin(), sweeps.end());
  result.most_sweeps = *std::max_element(sweeps.begin(), sweeps.end());
  return result;
}

}  // namespace bilevel::testing
