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
#include "naive_convolution.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

/// Whether `value` is `exact` up to the rounding of `S` over `terms` terms whose magnitudes
/// sum to `scale`.
template <class S>
bool close(S value, double exact, double scale, Index terms) {
  const double unit = double(std::numeric_limits<S>::epsilon());
  return std::abs(double(value) - exact) <= double(terms + 2) * unit * (scale + 1e-30);
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
  const image_shape out = conv.output();
  REQUIRE(out.pixels() >= 16 * conv.patch_size());
  random_source random(5);
  const Index B = 11;  // a chunk of 8 images of the gradient and a rest
  const Matrix<S> weights = random_matrix<S>(random, conv.patch_size(), filters);
  const Vector<S> bias = random_matrix<S>(random, filters, 1);
  const Matrix<S> x = random_matrix<S>(random, conv.inputs(), B);
  const Matrix<S> g = random_matrix<S>(random, conv.outputs(), B);
  const Index taps = conv.patch_size();

  // Every entry is written: the outputs start as NaN.
  const S nan = std::numeric_limits<S>::quiet_NaN();
  Matrix<S> a = Matrix<S>::Constant(conv.outputs(), B, nan);
  Matrix<S> linear = Matrix<S>::Constant(conv.outputs(), B, nan);
  conv.apply(weights, bias, x, a);
  conv.apply_linear(weights, x, linear);
  // The sums in double, and the sums of the terms' magnitudes (their rounding scale).
  const Matrix<double> W = weights.template cast<double>(), X = x.template cast<double>();
  const Vector<double> b = bias.template cast<double>(), no_bias = Vector<double>::Zero(filters);
  const Matrix<double> exact = naive_convolution(conv, W, b, X);
  const Matrix<double> magnitude = naive_convolution(conv, W.cwiseAbs(), b.cwiseAbs(),
                                                     X.cwiseAbs());
  const Matrix<double> exact_linear = naive_convolution(conv, W, no_bias, X);
  const Matrix<double> magnitude_linear =
      naive_convolution(conv, W.cwiseAbs(), no_bias, X.cwiseAbs());
  Index wrong = 0;
  for (Index n = 0; n < B; ++n)
    for (Index row = 0; row < conv.outputs(); ++row) {
      wrong += !close(linear(row, n), exact_linear(row, n), magnitude_linear(row, n), taps);
      wrong += !close(a(row, n), exact(row, n), magnitude(row, n), taps + 1);
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
  const Matrix<double> G = g.template cast<double>();
  for (Index f = 0; f < filters; ++f) {
    const auto g_f = G.middleRows(f * out.pixels(), out.pixels()).array();
    wrong += !close(db(f), scale * g_f.sum(), scale * g_f.abs().sum(), terms);
  }
  // Tap t's input x_n(c, i - p + u, j - p + v) at every output position (i, j): the
  // convolution whose weights are 1 at t in every filter and 0 elsewhere.
  for (Index t = 0; t < taps; ++t) {
    Matrix<double> tap_weights = Matrix<double>::Zero(taps, filters);
    tap_weights.row(t).setOnes();
    const Matrix<double> tap_input = naive_convolution(conv, tap_weights, no_bias, X);
    for (Index f = 0; f < filters; ++f) {
      const auto g_f = G.middleRows(f * out.pixels(), out.pixels()).array();
      const auto x_t = tap_input.middleRows(f * out.pixels(), out.pixels()).array();
      const double sum = scale * (g_f * x_t).sum(), size = scale * (g_f * x_t).abs().sum();
      wrong += !close(dW(t, f), sum, size, terms);
      wrong += !close(added(t, f), sum + 1, size + 1, terms + 1);
    }
  }
  CHECK(wrong == 0);
}
