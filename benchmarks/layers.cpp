// The image maps at LeNet-5's shapes (float, batch 50, one thread): conv2d's forward map, its
// transpose and its parameter gradient, each against the floor of its own matrix products
// (the same per-image products on preallocated patch matrices), so that the rest, im2col's
// gather and scatter, reads as a ratio of one run; and average pooling.

#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include "bilevel/layers/avg_pool.hpp"
#include "bilevel/layers/conv2d.hpp"

namespace {

using S = float;
using bilevel::Index;
using bilevel::Matrix;
using bilevel::Vector;
constexpr Index batch = 50;

// LeNet-5's convolutions: 1x28x28 by 6 filters 5x5 with padding 2, 6x14x14 by 16 filters 5x5.
bilevel::conv2d<S>::geometry lenet_conv(Index layer) {
  if (layer == 1) return {{1, 28, 28}, 6, 5, 1, 2};
  return {{6, 14, 14}, 16, 5, 1, 0};
}

enum class conv_part { forward, transpose, gradient };

struct conv_fixture {
  bilevel::conv2d<S> conv;
  Matrix<S> weights, x, out, signal, back, weight_gradient, patches;
  Vector<S> bias, bias_gradient;

  explicit conv_fixture(Index layer)
      : conv(lenet_conv(layer)),
        weights(Matrix<S>::Random(conv.patch_size(), conv.shape().filters)),
        x(Matrix<S>::Random(conv.inputs(), batch)),
        out(conv.outputs(), batch),
        signal(Matrix<S>::Random(conv.outputs(), batch)),
        back(conv.inputs(), batch),
        weight_gradient(conv.patch_size(), conv.shape().filters),
        patches(Matrix<S>::Random(conv.output().pixels(), conv.patch_size())),
        bias(Vector<S>::Random(conv.shape().filters)),
        bias_gradient(conv.shape().filters) {}

  double flops() const {
    return 2.0 * double(conv.output().pixels() * conv.patch_size() * conv.shape().filters) *
           double(batch);
  }
};

void conv2d_map(benchmark::State& state, Index layer, conv_part part) {
  conv_fixture f(layer);
  for (auto _ : state) {
    if (part == conv_part::forward) f.conv.apply(f.weights, f.bias, f.x, f.out);
    if (part == conv_part::transpose) f.conv.apply_transpose(f.weights, f.signal, f.back);
    if (part == conv_part::gradient)
      f.conv.parameter_gradient(f.x, f.signal, S(1) / S(batch), f.weight_gradient,
                                f.bias_gradient);
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(f.flops() * double(state.iterations()) * 1e-9,
                                                 benchmark::Counter::kIsRate);
}

/// The products alone: per image, patches x weights (forward), signal x weights^T
/// (transpose), patches^T x signal (gradient), into preallocated matrices.
void conv2d_products(benchmark::State& state, Index layer, conv_part part) {
  conv_fixture f(layer);
  const Index P = f.conv.output().pixels(), F = f.conv.shape().filters;
  Matrix<S> image_gradient(P, f.conv.patch_size());
  for (auto _ : state) {
    for (Index j = 0; j < batch; ++j) {
      bilevel::MatrixMap<S> image(f.out.col(j).data(), P, F);
      const bilevel::ConstMatrixMap<S> g(f.signal.col(j).data(), P, F);
      if (part == conv_part::forward) image.noalias() = f.patches * f.weights;
      if (part == conv_part::transpose) image_gradient.noalias() = g * f.weights.transpose();
      if (part == conv_part::gradient) f.weight_gradient.noalias() += f.patches.transpose() * g;
    }
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(f.flops() * double(state.iterations()) * 1e-9,
                                                 benchmark::Counter::kIsRate);
}

void avg_pool_map(benchmark::State& state, Index layer, bool transpose) {
  // LeNet-5's poolings: 6x28x28 and 16x10x10, windows 2x2.
  const bilevel::avg_pool<S> pool(
      {layer == 1 ? bilevel::image_shape{6, 28, 28} : bilevel::image_shape{16, 10, 10}, 2, 0});
  const Matrix<S> x = Matrix<S>::Random(pool.inputs(), batch);
  const Matrix<S> g = Matrix<S>::Random(pool.outputs(), batch);
  Matrix<S> out(pool.outputs(), batch), back(pool.inputs(), batch);
  for (auto _ : state) {
    if (transpose)
      pool.apply_transpose(g, back);
    else
      pool.apply(x, out);
    benchmark::ClobberMemory();
  }
  state.counters["elements"] = double(pool.inputs() * batch);
}

}  // namespace

BENCHMARK_CAPTURE(conv2d_map, conv1_forward, 1, conv_part::forward);
BENCHMARK_CAPTURE(conv2d_products, conv1_forward, 1, conv_part::forward);
BENCHMARK_CAPTURE(conv2d_map, conv1_transpose, 1, conv_part::transpose);
BENCHMARK_CAPTURE(conv2d_products, conv1_transpose, 1, conv_part::transpose);
BENCHMARK_CAPTURE(conv2d_map, conv1_gradient, 1, conv_part::gradient);
BENCHMARK_CAPTURE(conv2d_products, conv1_gradient, 1, conv_part::gradient);
BENCHMARK_CAPTURE(conv2d_map, conv2_forward, 2, conv_part::forward);
BENCHMARK_CAPTURE(conv2d_products, conv2_forward, 2, conv_part::forward);
BENCHMARK_CAPTURE(conv2d_map, conv2_transpose, 2, conv_part::transpose);
BENCHMARK_CAPTURE(conv2d_products, conv2_transpose, 2, conv_part::transpose);
BENCHMARK_CAPTURE(conv2d_map, conv2_gradient, 2, conv_part::gradient);
BENCHMARK_CAPTURE(conv2d_products, conv2_gradient, 2, conv_part::gradient);
BENCHMARK_CAPTURE(avg_pool_map, pool1, 1, false);
BENCHMARK_CAPTURE(avg_pool_map, pool1_transpose, 1, true);
BENCHMARK_CAPTURE(avg_pool_map, pool2, 2, false);
BENCHMARK_CAPTURE(avg_pool_map, pool2_transpose, 2, true);

BENCHMARK_MAIN();
