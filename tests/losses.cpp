// Outer losses (docs/methods.md §1, §5.6b): a loss's change l(z + h) - l(z) taken in h equals the
// difference of its values, keeps its digits in float where that difference loses them, and a
// loss without one is served by the difference.

#include <catch2/catch.hpp>
#include <cmath>
#include <string>

#include "bilevel/activations/activations.hpp"
#include "bilevel/losses/losses.hpp"
#include "bilevel/program.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

template <class Loss, class S>
RowVector<S> change_of(const Loss& loss, const Matrix<S>& z, const Matrix<S>& h, const Matrix<S>& y) {
  RowVector<S> out(z.cols());
  loss.template change<S>(z, h, y, out);
  return out;
}

template <class Loss>
RowVector<double> difference_of(const Loss& loss, const Matrix<double>& z, const Matrix<double>& h,
                                const Matrix<double>& y) {
  const Matrix<double> moved = z + h;
  return loss.template value<double>(moved, y) - loss.template value<double>(z, y);
}

/// The squared error's value only: a user's loss without a change of its own.
struct plain_squared_error {
  std::string name() const { return "plain_squared_error"; }
  template <class S>
  RowVector<S> value(const MatrixCRef<S>& z, const MatrixCRef<S>& y) const {
    return (z - y).colwise().squaredNorm() / S(2);
  }
  template <class S>
  void gradient(const MatrixCRef<S>& z, const MatrixCRef<S>& y, Matrix<S>& g) const {
    g = z - y;
  }
};

}  // namespace

TEMPLATE_TEST_CASE("a loss's change in h is the difference of its values", "[losses]",
                   softmax_cross_entropy, mse) {
  random_source random(81);
  const Matrix<double> z = 3 * random_matrix<double>(random, 6, 5);
  const Matrix<double> h = random_matrix<double>(random, 6, 5) / 2;
  const Matrix<double> y = random_one_hot<double>(random, 6, 5);
  const TestType loss;
  CHECK(relative_error(change_of(loss, z, h, y).transpose(), difference_of(loss, z, h, y).transpose()) < 1e-12);
}

TEMPLATE_TEST_CASE("a loss's change keeps its digits in float for a small move of large values",
                   "[losses]", softmax_cross_entropy, mse) {
  random_source random(82);
  const Matrix<double> z = 20 * random_matrix<double>(random, 6, 5);
  const Matrix<double> h = 1e-5 * random_matrix<double>(random, 6, 5);
  const Matrix<double> y = random_one_hot<double>(random, 6, 5);
  const TestType loss;
  // The reference in double from the same float inputs.
  const Matrix<float> zf = z.cast<float>(), hf = h.cast<float>(), yf = y.cast<float>();
  const RowVector<double> exact =
      difference_of(loss, zf.cast<double>(), hf.cast<double>(), yf.cast<double>());
  const RowVector<double> changed = change_of(loss, zf, hf, yf).template cast<double>();
  CHECK(relative_error(changed.transpose(), exact.transpose()) < 1e-4);
}

TEST_CASE("program::loss_change serves a loss without a change by the difference of values",
          "[losses]") {
  random_source random(83);
  const auto net = make_mlp<double, relu, plain_squared_error>({3, 4});
  const auto reference = make_mlp<double, relu, mse>({3, 4});
  const Matrix<double> z = random_matrix<double>(random, 4, 5);
  const Matrix<double> h = random_matrix<double>(random, 4, 5) / 10;
  const Matrix<double> y = random_matrix<double>(random, 4, 5);
  RowVector<double> plain(5), built_in(5);
  net.loss_change(z, h, y, plain);
  reference.loss_change(z, h, y, built_in);
  CHECK(relative_error(plain.transpose(), built_in.transpose()) < 1e-12);
  CHECK_THROWS_WITH(net.loss_change(z, h.leftCols(4), y, plain),
                    Catch::Contains("program::loss_change") && Catch::Contains("h"));
}
