#pragma once
// The convolution of layers/conv2d.hpp written from its definition, in double, for the tests
// of conv2d's im2col and direct paths.

#include "bilevel/layers/conv2d.hpp"

namespace bilevel::testing {

/// a(f, i, j) = b_f + sum_{c,u,v} w_f(c,u,v) x(c, i*s - p + u, j*s - p + v), zero outside.
template <class S>
Matrix<double> naive_convolution(const conv2d<S>& conv, const Matrix<double>& weights,
                                 const Vector<double>& bias, const Matrix<double>& x) {
  const auto& g = conv.shape();
  const image_shape in = g.input, out = conv.output();
  const Index K = g.kernel;
  Matrix<double> a(out.size(), x.cols());
  for (Index n = 0; n < x.cols(); ++n)
    for (Index f = 0; f < out.channels; ++f)
      for (Index i = 0; i < out.height; ++i)
        for (Index j = 0; j < out.width; ++j) {
          double sum = bias(f);
          for (Index c = 0; c < in.channels; ++c)
            for (Index u = 0; u < K; ++u)
              for (Index v = 0; v < K; ++v) {
                const Index row = i * g.stride - g.padding + u;
                const Index col = j * g.stride - g.padding + v;
                if (row < 0 || row >= in.height || col < 0 || col >= in.width) continue;
                sum += weights((c * K + u) * K + v, f) *
                       x((c * in.height + row) * in.width + col, n);
              }
          a((f * out.height + i) * out.width + j, n) = sum;
        }
  return a;
}

}  // namespace bilevel::testing
