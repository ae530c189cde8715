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
  Index parameter_count() const { return 0; }

  /// out = A x for every column of x (inputs() x B into outputs() x B).
  void apply(const MatrixCRef<S>& x, MatrixRef<S> out) const {
    detail::require_sample_columns("avg_pool::apply", "x", inputs(), x.rows(), x.cols());
    detail::require_shape("avg_pool::apply", "out", outputs(), x.cols(), out.rows(), out.cols());
    out.setZero();
    for (Index n = 0; n < x.cols(); ++n)  // image by image: a column is contiguous
      for_each_window_pixel([&](Index pixel, Index at) { out(at, n) += x(pixel, n); });
    out *= weight();
  }

  /// out = scale A^T g for every column of g (outputs() x B into inputs() x B), or out += that
  /// with output_mode::add.
  void apply_transpose(const MatrixCRef<S>& g, MatrixRef<S> out, S scale = S(1),
                       output_mode mode = output_mode::assign) const {
    detail::require_sample_columns("avg_pool::apply_transpose", "g", outputs(), g.rows(),
                                   g.cols());
    detail::require_shape("avg_pool::apply_transpose", "out", inputs(), g.cols(), out.rows(),
                          out.cols());
    if (mode == output_mode::assign) out.setZero();
    const S share = scale * weight();
    for (Index n = 0; n < g.cols(); ++n)
      for_each_window_pixel([&](Index pixel, Index at) { out(pixel, n) += share * g(at, n); });
  }

 private:
  S weight() const { return S(1) / S(shape_.kernel * shape_.kernel); }

  /// Calls visit(pixel, output) for every input pixel of every window, with the window's
  /// output entry: (c, i, j) at (c*OH + i)*OW + j reads (c, i*stride + u, j*stride + v).
  template <class Visit>
  void for_each_window_pixel(const Visit& visit) const {
    const Index K = shape_.kernel, H = shape_.input.height, W = shape_.input.width;
    for (Index c = 0; c < output_.channels; ++c)
      for (Index i = 0; i < output_.height; ++i)
        for (Index j = 0; j < output_.width; ++j)
          for (Index u = 0; u < K; ++u)
            for (Index v = 0; v < K; ++v) {
              const Index row = i * shape_.stride + u, col = j * shape_.stride + v;
              visit((c * H + row) * W + col, (c * output_.height + i) * output_.width + j);
            }
  }

  geometry shape_;
  image_shape output_;
};

}  // namespace bilevel
