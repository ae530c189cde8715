#pragma once
/// \file
/// The layout of images in a batch. An image of C channels, H rows and W columns is one column
/// of C*H*W numbers, channel by channel, each channel row by row: pixel (c, h, w) at
/// (c*H + h)*W + w. One channel in this order is an MNIST idx image as it is read, and one
/// image seen as a column-major (H*W) x C matrix has a channel per column, which is how the
/// convolution multiplies it (layers/conv2d.hpp).

#include <string>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace bilevel {

struct image_shape {
  Index channels = 1, height = 1, width = 1;

  Index pixels() const { return height * width; }
  Index size() const { return channels * height * width; }
  /// "CxHxW", for messages.
  std::string text() const { return detail::concat(channels, "x", height, "x", width); }
  friend bool operator==(const image_shape&, const image_shape&) = default;
};

namespace detail {

/// Throws config_error unless every extent of `shape` is positive.
inline void require_image_shape(std::string_view function, std::string_view what,
                                const image_shape& shape) {
  require(shape.channels > 0 && shape.height > 0 && shape.width > 0, function, what,
          "positive in every extent", shape.text());
}

/// Output extent of a window of `kernel` taken every `stride` over `extent` zero-padded by
/// `padding` on both sides; throws shape_error, naming `function` and both sizes, when the
/// window does not fit.
inline Index window_positions(std::string_view function, std::string_view what, Index extent,
                              Index kernel, Index stride, Index padding) {
  if (kernel > extent + 2 * padding)
    throw shape_error(concat(function, ": the ", what, " kernel ", kernel,
                             " is larger than the padded input ", extent, " + 2 x ", padding));
  return (extent + 2 * padding - kernel) / stride + 1;
}

/// The most windows of `kernel` x `kernel` taken every `stride` that read one pixel,
/// ceil(kernel / stride)^2: a norm bound of every windowed map counts each pixel this often.
inline Index windows_per_pixel(Index kernel, Index stride) {
  const Index per_axis = (kernel + stride - 1) / stride;
  return per_axis * per_axis;
}

}  // namespace detail
}  // namespace bilevel
