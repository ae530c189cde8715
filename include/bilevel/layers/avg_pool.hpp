#pragma once
/// \file
/// Average pooling as a linear map of a batch of images (layers/image.hpp's layout): every
/// channel's K x K windows, taken every `stride` pixels (K by default: windows that tile the
/// image), are replaced by their means,
///
///   a(c, i, j) = 1/K^2 sum_{u, v < K} x(c, i*stride + u, j*stride + v),
///
/// and the transpose spreads each output entry's signal, divided by K^2, over its window.
/// No parameters and no padding (rows or columns past the last whole window are not read).
/// Linear, so it fits every method, with the identity pair after it.

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "image.hpp"
#include "map.hpp"

namespace bilevel {

template <Scalar S>
class avg_pool {
 public:
  struct geometry {
    image_shape input;
    Index kernel = 2;
    Index stride = 0;  ///< 0: the kernel size
  };

  /// Throws config_error for non-positive extents or kernel or a negative stride, and
  /// shape_error when the kernel is larger than the input.
  explicit avg_pool(const geometry& shape) : shape_(shape) {
    constexpr std::string_view function = "avg_pool";
    detail::require_image_shape(function, "the input", shape.input);
    detail::require(shape.kernel > 0, function, "the kernel size", "> 0", shape.kernel);
    detail::require(shape.stride >= 0, function, "the stride", ">= 0 (0: the kernel size)",
                    shape.stride);
    if (shape_.stride == 0) shape_.stride = shape.kernel;
    output_ = {shape.input.channels,
               detail::window_positions(function, "row", shape.input.height, shape.kernel,
                                        shape_.stride, 0),
               detail::window_positions(function, "column", shape.input.width, shape.kernel,
                                        shape_.stride, 0)};
  }

  const geometry& shape() const { return shape_; }
  const image_shape& input() const { return shape_.input; }
  const image_shape& output() const { return output_; }
  Index inputs() const { return shape_.input.size(); }
  Index outputs() const { return output_.size(); }

  /// m / K^2 >= ||A||_2^2 with m = ceil(K / stride)^2, the most windows that read one pixel
  /// (Schur's test: each row of A sums to 1, each column to at most m / K^2).
  S squared_norm_bound() const {
    return S(detail::windows_per_pixel(shape_.kernel, shape_.stride)) /
           S(shape_.kernel * shape_.kernel);
  }

  /// out = A x for every column of x (inputs() x B into outputs() x B).
  void apply(const MatrixCRef<S>& x, MatrixRef<S> out) const {
    detail::require_sample_columns("avg_pool::apply", "x", inputs(), x.rows(), x.cols());
    detail::require_shape("avg_pool::apply", "out", outputs(), x.cols(), out.rows(), out.cols());
    if (tiles_by_two()) return apply_tiles_by_two(x, out);
    out.setZero();
    const S share = weight();
    for (Index n = 0; n < x.cols(); ++n)  // image by image: a column is contiguous
      for_each_window_row([&](const Index pixel, S* const to, const Index stride) {
        const S* const from = x.col(n).data() + pixel;
        for (Index j = 0; j < output_.width; ++j) {
          S sum = 0;
          for (Index v = 0; v < shape_.kernel; ++v) sum += from[j * stride + v];
          to[j] += share * sum;
        }
      }, out.col(n).data());
  }

  /// out = scale A^T g for every column of g (outputs() x B into inputs() x B), or out += that
  /// with output_mode::add.
  void apply_transpose(const MatrixCRef<S>& g, MatrixRef<S> out, S scale = S(1),
                       output_mode mode = output_mode::assign) const {
    detail::require_sample_columns("avg_pool::apply_transpose", "g", outputs(), g.rows(),
                                   g.cols());
    detail::require_shape("avg_pool::apply_transpose", "out", inputs(), g.cols(), out.rows(),
                          out.cols());
    if (tiles_by_two()) return apply_transpose_tiles_by_two(g, out, scale, mode);
    if (mode == output_mode::assign) out.setZero();
    const S share = scale * weight();
    for (Index n = 0; n < g.cols(); ++n)
      for_each_window_row([&](const Index pixel, const S* const signal, const Index stride) {
        S* const to = out.col(n).data() + pixel;
        for (Index v = 0; v < shape_.kernel; ++v)
          for (Index j = 0; j < output_.width; ++j) to[j * stride + v] += share * signal[j];
      }, g.col(n).data());
  }

 private:
  S weight() const { return S(1) / S(shape_.kernel * shape_.kernel); }

  /// LeNet's pooling, 2 x 2 windows every 2 pixels, has loops of its own that the compiler
  /// vectorises (the general ones, with the kernel and stride known only at run time, stay
  /// scalar; bench_layers measures them). They form the same sums as the general loops and
  /// write `0 + sum` where those add into zeroed memory (a -0 becomes +0 either way), so they
  /// give the same bits, signed zeros included.
  bool tiles_by_two() const { return shape_.kernel == 2 && shape_.stride == 2; }

  void apply_tiles_by_two(const MatrixCRef<S>& x, MatrixRef<S> out) const {
    const S quarter = weight();
    const Index W = shape_.input.width;
    for (Index n = 0; n < x.cols(); ++n)
      for (Index c = 0; c < output_.channels; ++c)
        for (Index i = 0; i < output_.height; ++i) {
          const S* const top = x.col(n).data() + (c * shape_.input.height + 2 * i) * W;
          const S* const bottom = top + W;
          S* const to = out.col(n).data() + (c * output_.height + i) * output_.width;
          for (Index j = 0; j < output_.width; ++j)
            to[j] = (S(0) + quarter * (top[2 * j] + top[2 * j + 1])) +
                    quarter * (bottom[2 * j] + bottom[2 * j + 1]);
        }
  }

  void apply_transpose_tiles_by_two(const MatrixCRef<S>& g, MatrixRef<S> out, const S scale,
                                    const output_mode mode) const {
    // Where the windows cover the image, assigning `0 + term` to each pixel is adding it into
    // zeroed memory without the pass that zeroes it.
    const bool covers = shape_.input.height == 2 * output_.height &&
                        shape_.input.width == 2 * output_.width;
    const bool assign = mode == output_mode::assign && covers;
    if (mode == output_mode::assign && !covers) out.setZero();
    const S scaled_quarter = scale * weight();
    const Index W = shape_.input.width;
    for (Index n = 0; n < g.cols(); ++n)
      for (Index c = 0; c < output_.channels; ++c)
        for (Index i = 0; i < output_.height; ++i) {
          const S* const signal = g.col(n).data() + (c * output_.height + i) * output_.width;
          for (Index u = 0; u < 2; ++u) {
            S* const to = out.col(n).data() + (c * shape_.input.height + 2 * i + u) * W;
            if (assign) {
              for (Index j = 0; j < output_.width; ++j)
                to[2 * j] = to[2 * j + 1] = S(0) + scaled_quarter * signal[j];
            } else {
              for (Index j = 0; j < output_.width; ++j) {
                to[2 * j] += scaled_quarter * signal[j];
                to[2 * j + 1] += scaled_quarter * signal[j];
              }
            }
          }
        }
  }

  /// Calls visit(pixel, row, stride) for every window row u of every output row (c, i): the
  /// windows of output row (c, i) read input row (c, i*stride + u), starting at `pixel`, and
  /// `row` points at the output row's first entry (c*OH + i)*OW in the output-side image at
  /// `image`.
  template <class Pointer, class Visit>
  void for_each_window_row(const Visit& visit, Pointer image) const {
    const Index H = shape_.input.height, W = shape_.input.width;
    for (Index c = 0; c < output_.channels; ++c)
      for (Index i = 0; i < output_.height; ++i)
        for (Index u = 0; u < shape_.kernel; ++u)
          visit((c * H + i * shape_.stride + u) * W,
                image + (c * output_.height + i) * output_.width, shape_.stride);
  }

  geometry shape_;
  image_shape output_;
};

}  // namespace bilevel
