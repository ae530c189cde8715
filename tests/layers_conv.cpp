// layers/conv2d.hpp and layers/avg_pool.hpp against loops written from their definitions, the
// transpose against the adjoint identity <A x, g> = <x, A^T g>, the parameter gradient against
// central differences, and the shape errors.

#include <catch2/catch.hpp>

#include <limits>
#include <tuple>

#include "bilevel/layers/avg_pool.hpp"
#include "bilevel/layers/conv2d.hpp"
#include "helpers.hpp"
#include "naive_convolution.hpp"

using namespace bilevel;
using namespace bilevel::testing;

TEST_CASE("conv2d equals the convolution's definition, and its transpose is its adjoint",
          "[conv]") {
  // (channels, height, width, filters, kernel, stride, padding): LeNet-5's two convolutions
  // in small, non-square images, strides that skip pixels, padding wider than the stride;
  // LeNet-5's conv2 itself; rows of 7, which whole packets of 2 or 8 entries overrun, next to
  // padding (the gather copies rows in whole packets where that is safe); input rows of 9 and
  // of 1, which the transpose's packets overrun, in a tile of 8 output rows and the rest (where
  // every window lies inside the image, the transpose adds whole input rows; rows of 1 reach
  // into the next row's first packet even where a packet holds 2 entries).
  const auto [channels, height, width, filters, kernel, stride, padding] =
      GENERATE(std::make_tuple(1, 8, 8, 3, 5, 1, 2), std::make_tuple(2, 7, 6, 4, 3, 1, 0),
               std::make_tuple(3, 9, 7, 2, 3, 2, 1), std::make_tuple(2, 6, 9, 3, 4, 3, 2),
               std::make_tuple(1, 5, 5, 2, 5, 1, 0), std::make_tuple(6, 14, 14, 16, 5, 1, 0),
               std::make_tuple(1, 7, 7, 2, 3, 1, 1), std::make_tuple(2, 11, 9, 3, 3, 1, 0),
               std::make_tuple(2, 10, 1, 2, 1, 1, 0));
  const conv2d<double> conv({{channels, height, width}, filters, kernel, stride, padding});
  random_source random(1);
  CAPTURE(channels, height, width, filters, kernel, stride, padding);
  const Index B = 3;
  const Matrix<double> weights = random_matrix<double>(random, conv.patch_size(), filters);
  const Vector<double> bias = random_matrix<double>(random, filters, 1);
  const Matrix<double> x = random_matrix<double>(random, conv.inputs(), B);
  CHECK(conv.output().height == (height + 2 * padding - kernel) / stride + 1);

  Matrix<double> a(conv.outputs(), B);
  conv.apply(weights, bias, x, a);
  CHECK((a - naive_convolution(conv, weights, bias, x)).cwiseAbs().maxCoeff() < 1e-12);

  const Matrix<double> g = random_matrix<double>(random, conv.outputs(), B);
  Matrix<double> back(conv.inputs(), B);
  conv.apply_transpose(weights, g, back);
  const Vector<double> zero = Vector<double>::Zero(filters);
  Matrix<double> linear(conv.outputs(), B);
  conv.apply(weights, zero, x, linear);
  const double forward = (linear.array() * g.array()).sum();
  CHECK(std::abs(forward - (x.array() * back.array()).sum()) < 1e-12 * (1 + std::abs(forward)));
}

TEST_CASE("conv2d's parameter gradient is the gradient of <g, A x + b>", "[conv]") {
  // The last two shapes have many output positions per patch entry (144 of 9), which conv2d
  // correlates directly at stride 1 (layers/flat_correlation.hpp) and sums one filter at a
  // time at stride 2; 11 images make a chunk of 8 and a rest.
  const auto [input, stride, padding] =
      GENERATE(std::make_tuple(image_shape{2, 7, 6}, 1, 0),
               std::make_tuple(image_shape{2, 7, 6}, 1, 2),
               std::make_tuple(image_shape{2, 7, 6}, 2, 1),
               std::make_tuple(image_shape{1, 12, 12}, 1, 1),
               std::make_tuple(image_shape{1, 24, 24}, 2, 1));
  const conv2d<double> conv({input, 3, 3, stride, padding});
  random_source random(2);
  const Index B = 11;
  Matrix<double> weights = random_matrix<double>(random, conv.patch_size(), 3);
  Vector<double> bias = random_matrix<double>(random, 3, 1);
  const Matrix<double> x = random_matrix<double>(random, conv.inputs(), B);
  const Matrix<double> g = random_matrix<double>(random, conv.outputs(), B);
  const double scale = 0.25;
  Matrix<double> dW(conv.patch_size(), 3);
  Vector<double> db(3);
  conv.parameter_gradient(x, g, scale, dW, db);

  Matrix<double> a(conv.outputs(), B);
  const auto value = [&] {
    conv.apply(weights, bias, x, a);
    return scale * (a.array() * g.array()).sum();
  };
  const double h = 1e-3;  // the value is linear in the parameters: differences are exact
  const auto difference = [&](double& parameter) {
    const double saved = parameter;
    parameter = saved + h;
    const double up = value();
    parameter = saved - h;
    const double down = value();
    parameter = saved;
    return (up - down) / (2 * h);
  };
  for (Index i = 0; i < weights.size(); ++i)
    CHECK(difference(weights(i)) == Approx(dW(i)).margin(1e-9));
  for (Index f = 0; f < 3; ++f) CHECK(difference(bias(f)) == Approx(db(f)).margin(1e-9));
}

TEST_CASE("avg_pool averages each window, and its transpose is its adjoint", "[conv]") {
  const auto [height, width, kernel, stride] =
      GENERATE(std::make_tuple(8, 8, 2, 0), std::make_tuple(7, 9, 2, 0),
               std::make_tuple(7, 7, 3, 2), std::make_tuple(5, 6, 2, 1));
  const avg_pool<double> pool({{3, height, width}, kernel, stride});
  random_source random(3);
  const Index s = stride == 0 ? kernel : stride;
  const Index B = 2;
  const Matrix<double> x = random_matrix<double>(random, pool.inputs(), B);
  Matrix<double> a(pool.outputs(), B);
  pool.apply(x, a);
  const image_shape out = pool.output();
  CHECK(out.height == (height - kernel) / s + 1);
  CHECK(out.width == (width - kernel) / s + 1);
  double largest = 0;
  for (Index n = 0; n < B; ++n)
    for (Index c = 0; c < 3; ++c)
      for (Index i = 0; i < out.height; ++i)
        for (Index j = 0; j < out.width; ++j) {
          double sum = 0;
          for (Index u = 0; u < kernel; ++u)
            for (Index v = 0; v < kernel; ++v)
              sum += x((c * height + i * s + u) * width + j * s + v, n);
          const double expected = sum / double(kernel * kernel);
          largest = std::max(largest,
                             std::abs(a((c * out.height + i) * out.width + j, n) - expected));
        }
  CHECK(largest < 1e-14);

  const Matrix<double> g = random_matrix<double>(random, pool.outputs(), B);
  // Assigning overwrites every pixel, those outside all windows with 0.
  Matrix<double> back =
      Matrix<double>::Constant(pool.inputs(), B, std::numeric_limits<double>::quiet_NaN());
  pool.apply_transpose(g, back);
  const double forward = (a.array() * g.array()).sum();
  CHECK(std::abs(forward - (x.array() * back.array()).sum()) < 1e-13 * (1 + std::abs(forward)));

  // Adding puts the scaled signal on top of what is there.
  const Matrix<double> start = random_matrix<double>(random, pool.inputs(), B);
  Matrix<double> sum = start;
  pool.apply_transpose(g, sum, -0.5, output_mode::add);
  CHECK(((sum - start) + 0.5 * back).cwiseAbs().maxCoeff() < 1e-14);
}

TEST_CASE("convolution and pooling refuse shapes that do not fit, naming both", "[conv]") {
  using Catch::Matchers::Contains;
  CHECK_THROWS_AS(conv2d<double>({{1, 4, 4}, 2, 5, 1, 0}), shape_error);
  CHECK_THROWS_WITH(conv2d<double>({{1, 4, 9}, 2, 7, 1, 1}),
                    Contains("conv2d") && Contains("row kernel 7") && Contains("4 + 2 x 1"));
  CHECK_NOTHROW(conv2d<double>({{1, 3, 3}, 2, 5, 1, 1}));  // 3 + 2 padded fits 5
  CHECK_THROWS_AS(conv2d<double>({{0, 4, 4}, 2, 3, 1, 0}), config_error);
  CHECK_THROWS_AS(conv2d<double>({{1, 4, 4}, 2, 3, 0, 0}), config_error);
  CHECK_THROWS_AS(conv2d<double>({{1, 4, 4}, 2, 3, 1, -1}), config_error);
  CHECK_THROWS_AS(avg_pool<double>({{2, 1, 4}, 2, 0}), shape_error);

  const conv2d<double> conv({{2, 6, 6}, 3, 3, 1, 1});
  const Matrix<double> weights = Matrix<double>::Zero(conv.patch_size(), 3);
  const Vector<double> bias = Vector<double>::Zero(3);
  Matrix<double> out(conv.outputs(), 2);
  CHECK_THROWS_WITH(conv.apply(weights, bias, Matrix<double>::Zero(71, 2), out),
                    Contains("conv2d::apply") && Contains("72 x B") && Contains("71x2"));
  CHECK_THROWS_WITH(conv.apply(Matrix<double>::Zero(18, 2), bias, Matrix<double>::Zero(72, 2), out),
                    Contains("conv2d::apply") && Contains("18x3") && Contains("18x2"));
  const avg_pool<double> pool({{3, 4, 4}, 2, 0});
  Matrix<double> pooled(11, 2);
  CHECK_THROWS_WITH(pool.apply(Matrix<double>::Zero(48, 2), pooled),
                    Contains("avg_pool::apply") && Contains("12x2") && Contains("11x2"));
}
