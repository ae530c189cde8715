// BP (docs/methods.md §5.1): gradients equal central finite differences of the batch-mean loss for
// every built-in activation pair and both losses, and the batch-mean convention holds.

#include <catch2/catch.hpp>

#include "bilevel/activations/activations.hpp"
#include "bilevel/losses/mse.hpp"
#include "bilevel/methods/bp.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

TEMPLATE_LIST_TEST_CASE("BP equals finite differences with softmax cross-entropy",
                        "[bp]", builtin_pairs) {
  random_source random(11);
  auto net = make_mlp<double, TestType>({5, 7, 6, 4});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 5, 9);
  const Matrix<double> y = random_one_hot<double>(random, 4, 9);
  Vector<double> gradient;
  bp<double> method;
  method.gradient(net, x, y, gradient);
  const Vector<double> reference = finite_difference_gradient(net, x, y);
  CHECK(relative_error(gradient, reference) < 1e-7);
}

TEMPLATE_LIST_TEST_CASE("BP equals finite differences with MSE through a non-identity output",
                        "[bp]", builtin_pairs) {
  random_source random(12);
  program<double, mse, TestType> net({4, 6, 5, 3}, {TestType{}, TestType{}, TestType{}});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 8);
  const Matrix<double> y = random_matrix<double>(random, 3, 8, 0.5);
  Vector<double> gradient;
  bp<double> method;
  method.gradient(net, x, y, gradient);
  const Vector<double> reference = finite_difference_gradient(net, x, y);
  CHECK(relative_error(gradient, reference) < 1e-7);
}

TEST_CASE("BP gradients are batch means: a duplicated batch gives the same gradient", "[bp]") {
  random_source random(13);
  auto net = make_mlp<double, relu>({3, 4, 2});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 5);
  const Matrix<double> y = random_one_hot<double>(random, 2, 5);
  Matrix<double> x2(3, 10), y2(2, 10);
  x2 << x, x;
  y2 << y, y;
  Vector<double> once, twice;
  bp<double> method;
  const step_report first = method.gradient(net, x, y, once);
  const step_report second = method.gradient(net, x2, y2, twice);
  CHECK((once - twice).norm() < 1e-14 * once.norm());
  CHECK(first.loss == Approx(second.loss).epsilon(1e-14));
  CHECK(second.correct == 2 * first.correct);
}

TEST_CASE("BP in float agrees with BP in double", "[bp]") {
  random_source random(14);
  auto net = make_mlp<double, tanh_pair>({6, 8, 3});
  randomize(net, random);
  auto net_float = make_mlp<float, tanh_pair>({6, 8, 3});
  net_float.parameters() = net.parameters().cast<float>();
  const Matrix<double> x = random_matrix<double>(random, 6, 16);
  const Matrix<double> y = random_one_hot<double>(random, 3, 16);
  Vector<double> gradient;
  Vector<float> gradient_float;
  bp<double>{}.gradient(net, x, y, gradient);
  bp<float>{}.gradient(net_float, x.cast<float>(), y.cast<float>(), gradient_float);
  CHECK(relative_error(gradient_float.cast<double>(), gradient) < 1e-5);
}

TEST_CASE("BP rejects targets of the wrong shape", "[bp]") {
  auto net = make_mlp<double, relu>({3, 4, 2});
  const Matrix<double> x = Matrix<double>::Zero(3, 5);
  Vector<double> gradient;
  bp<double> method;
  CHECK_THROWS_AS(method.gradient(net, x, Matrix<double>::Zero(3, 5), gradient), shape_error);
  CHECK_THROWS_WITH(method.gradient(net, Matrix<double>::Zero(4, 5), Matrix<double>::Zero(2, 5),
                                    gradient),
                    Catch::Contains("bp::gradient") && Catch::Contains("3 x B") &&
                        Catch::Contains("4x5"));
}
