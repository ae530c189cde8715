// The direct correlation (layers/flat_correlation.hpp), which conv2d runs at stride 1 where
// its patch matrix would be long and thin, against sums written from the definition in double,
// in float and double. This file is also compiled for the build machine's instruction set
// (tests/CMakeLists.txt, bilevel_tests_native), which is where the examples run it: with
// AVX-512 a packet holds 16 floats, with SSE2 4.

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <tuple>

#include "bilevel/layers/conv2d.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

/// Pixel (c, row, col) of image n of x, zero outside the image.
template <class S>
double pixel(const Matrix<S>& x, const image_shape& in, Index n, Index c, Index row, Index col) {
  if (row < 0 || row >= in.height || col < 0 || col >= in.width) return 0;
  return double(x((c * in.height + row) * in.width + col, n));
}

/// A sum of products in double and the sum of their magnitudes (its rounding scale).
struct sum_and_scale {
  double sum = 0, scale = 0;
  void add(double a, double b) {
    sum += a * b;
    scale += std::abs(a * b);
  }
};

/// Whether `value` is the exact sum up to the rounding of `S` over `terms` terms.
template <class S>
bool close(S value, const sum_and_scale& exact, Index terms) {
  const double unit = double(std::numeric_limits<S>::epsilon());
  return std::abs(double(value) - exact.sum) <= double(terms + 2) * unit * (exact.scale + 1e-30);
}

}  // namespace

TEMPLATE_TEST_CASE("conv2d's direct correlation equals the convolution's definition", "[conv]",
                   float, double) {
  using S = TestType;
  // (channels, height, width, filters, kernel, padding), all long and thin at stride 1:
  // LeNet-5's conv1; two channels with filters and taps that do not fill the register tiles
  // (4 of 3, 18 of 4); rows of 12, shorter than a packet of 16 floats; rows of 39, a packet
  // plus an overlapping tail.
  const auto [channels, height, width, filters, kernel, padding] =
      GENERATE(std::make_tuple(1, 28, 28, 6, 5, 2), std::make_tuple(2, 20, 20, 4, 3, 1),
               std::make_tuple(1, 14, 14, 2, 3, 0), std::make_tuple(1, 5, 40, 5, 2, 0));
  CAPTURE(channels, height, width, filters, kernel, padding);
  const conv2d<S> conv({{channels, height, width}, filters, kernel, 1, padding});
  const image_shape in = conv.input(), out = conv.output();
  REQUIRE(out.pixels() >= 16 * conv.patch_size());
  random_source random(5);
  const Index B = 11;  // a chunk of 8 images of the gradient and a rest
  const Matrix<S> weights = random_matrix<S>(random, conv.patch_size(), filters);
  const Vector<S> bias = random_matrix<S>(random, filters, 1);
  const Matrix<S> x = random_matrix<S>(random, conv.inputs(), B);
  const Matrix<S> g = random_matrix<S>(random, conv.outputs(), B);
  const Index K = kernel, taps = conv.patch_size();

  // Every entry is written: the outputs start as NaN.
  const S nan = std::numeric_limits<S>::quiet_NaN();
  Matrix<S> a = Matrix<S>::Constant(conv.outputs(), B, nan);
  Matrix<S> linear = Matrix<S>::Constant(conv.outputs(), B, nan);
  conv.apply(weights, bias, x, a);
  conv.apply_linear(weights, x, linear);
  Index wrong = 0;
  for (Index n = 0; n < B; ++n)
    for (Index f = 0; f < filters; ++f)
      for (Index i = 0; i < out.height; ++i)
        for (Index j = 0; j < out.width; ++j) {
          sum_and_scale exact;
          for (Index c = 0; c < channels; ++c)
            for (Index u = 0; u < K; ++u)
              for (Index v = 0; v < K; ++v)
                exact.add(double(weights((c * K + u) * K + v, f)),
                          pixel(x, in, n, c, i - padding + u, j - padding + v));
          const Index row = (f * out.height + i) * out.width + j;
          wrong += !close(linear(row, n), exact, taps);
          exact.add(double(bias(f)), 1.0);
          wrong += !close(a(row, n), exact, taps + 1);
        }
  CHECK(wrong == 0);

  // dW(t, f) = scale sum_n sum_{i,j} g_n(f, i, j) x_n(c, i - p + u, j - p + v), added onto
  // what dW holds by add_weight_gradient.
  const S scale = S(0.25);
  Matrix<S> dW(taps, filters), added = Matrix<S>::Ones(taps, filters);
  Vector<S> db(filters);
  conv.parameter_gradient(x, g, scale, dW, db);
  conv.add_weight_gradient(x, g, scale, added);
  wrong = 0;
  const Index terms = B * out.pixels();
  for (Index f = 0; f < filters; ++f) {
    sum_and_scale bias_sum;
    for (Index n = 0; n < B; ++n)
      for (Index p = 0; p < out.pixels(); ++p)
        bias_sum.add(double(scale), double(g(f * out.pixels() + p, n)));
    wrong += !close(db(f), bias_sum, terms);
    for (Index c = 0; c < channels; ++c)
      for (Index u = 0; u < K; ++u)
        for (Index v = 0; v < K; ++v) {
          sum_and_scale exact;
          for (Index n = 0; n < B; ++n)
            for (Index i = 0; i < out.height; ++i)
              for (Index j = 0; j < out.width; ++j)
                exact.add(double(scale) * double(g((f * out.height + i) * out.width + j, n)),
                          pixel(x, in, n, c, i - padding + u, j - padding + v));
          const Index t = (c * K + u) * K + v;
          wrong += !close(dW(t, f), exact, terms);
          exact.add(1.0, 1.0);
          wrong += !close(added(t, f), exact, terms + 1);
        }
  }
  CHECK(wrong == 0);
}
