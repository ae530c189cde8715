#pragma once
/// \file
/// A stride-1 convolution computed directly, for the layers where im2col does not pay: few
/// input channels and many output positions (a first layer, LeNet-5's conv1: 25 weights per
/// filter, 784 positions), whose patch matrix copies every pixel K*K times to feed a product
/// with only C*K*K rows. Lay the zero-padded image out flat, rows Wp = W + 2 padding apart and
/// channels Hp*Wp apart (Hp = H + 2 padding). Output position (i, j) reads padded pixel
/// (c, i + u, j + v), at flat index q + offset_t with q = i*Wp + j and
/// offset_t = (c*Hp + u)*Wp + v for the tap t = (c*K + u)*K + v, so
///
///   a_f[q] = sum_t w_f(t) x[q + offset_t],     dw_f(t) = sum_q g_f[q] x[q + offset_t],
///
/// one correlation over the flat index q with C*K*K taps, vectorised over q. Each row also
/// yields Wp - OW positions j >= OW that wrap into the next row: the forward pass computes and
/// drops them (Wp / OW - 1 more multiply-adds, 14% at conv1), and the gradient multiplies them
/// by zeros of g. Both sum the taps, and the positions, in another order than the product of
/// im2col does, so they agree with it to rounding.

#include <algorithm>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "../core/types.hpp"
#include "image.hpp"

namespace bilevel::detail {

template <Scalar S>
class flat_correlation {
  using Packet = typename Eigen::internal::packet_traits<S>::type;
  static constexpr Index lanes = Eigen::internal::packet_traits<S>::size;
  /// Register tiles: the forward pass keeps forward_filters x forward_packets sums of
  /// positions, the gradient gradient_taps x gradient_filters sums of products (12 each: of a
  /// processor's 16 or 32 vector registers, the rest hold the operands).
  static constexpr Index forward_filters = 3, forward_packets = 4;
  static constexpr Index gradient_filters = 3, gradient_taps = 4;

 public:
  flat_correlation(const image_shape& input, Index kernel, Index padding, Index filters)
      : input_(input), padding_(padding), filters_(filters),
        padded_width_(input.width + 2 * padding),
        padded_height_(input.height + 2 * padding),
        output_{filters, padded_height_ - kernel + 1, padded_width_ - kernel + 1} {
    const Index block = forward_packets * lanes;
    const Index last = (output_.height - 1) * padded_width_ + output_.width;
    positions_ = (last + block - 1) / block * block;
    for (Index c = 0; c < input.channels; ++c)
      for (Index u = 0; u < kernel; ++u)
        for (Index v = 0; v < kernel; ++v)
          offsets_.push_back((c * padded_height_ + u) * padded_width_ + v);
    padded_size_ = std::max(input.channels * padded_height_ * padded_width_,
                            positions_ + offsets_.back());
  }

  Index taps() const { return Index(offsets_.size()); }

  /// The calling thread's buffers for one call (forward or gradient) over any number of images:
  /// the padded image and the F planes of flat positions start at zero, and the gradient's sums
  /// too. They live in storage that only grows, shared by every object of this scalar type.
  struct workspace {
    S* padded;
    S* planes;
    S* sums;
  };
  workspace start() const {
    thread_local Vector<S> storage;
    const Index planes = filters_ * positions_, sums = taps() * filters_ * lanes;
    const Index size = padded_size_ + planes + sums;
    if (storage.size() < size) storage.resize(size);
    storage.head(size).setZero();
    return {storage.data(), storage.data() + padded_size_,
            storage.data() + padded_size_ + planes};
  }

  /// out (the output image: F planes of OH x OW) = the correlation of `image` with the filters,
  /// plus bias[f] on plane f unless bias is null. Filter f's weights are weights[f * stride +
  /// t] for t < taps().
  void forward(const workspace& work, const S* image, const S* weights, Index stride,
               const S* bias, S* out) const {
    pad(image, work.padded);
    const Index block = forward_packets * lanes;
    for (Index q = 0; q < positions_; q += block) {
      Index f = 0;
      for (; f + forward_filters <= filters_; f += forward_filters)
        forward_tile<forward_filters>(work, q, weights + f * stride, stride, f);
      for (; f < filters_; ++f) forward_tile<1>(work, q, weights + f * stride, stride, f);
    }
    for (Index f = 0; f < filters_; ++f) {
      const S offset = bias ? bias[f] : S(0);
      const auto add_bias = [offset](const auto& p) {
        return Eigen::internal::padd(p, Eigen::internal::pset1<std::decay_t<decltype(p)>>(offset));
      };
      for (Index i = 0; i < output_.height; ++i) {
        const S* from = work.planes + f * positions_ + i * padded_width_;
        S* to = out + (f * output_.height + i) * output_.width;
        if (bias)
          copy_row(from, output_.width, to, add_bias);
        else
          copy_row(from, output_.width, to, identity);
      }
    }
  }

  /// Adds to the workspace's sums the gradient of <g, A x> in the weights for one image and
  /// its output-side signal g (F planes of OH x OW), as packets of partial sums over positions.
  void add_gradient(const workspace& work, const S* image, const S* signal) const {
    pad(image, work.padded);
    for (Index f = 0; f < filters_; ++f)
      for (Index i = 0; i < output_.height; ++i)
        copy_row(signal + (f * output_.height + i) * output_.width, output_.width,
                 work.planes + f * positions_ + i * padded_width_, identity);
    Index f = 0;
    for (; f + gradient_filters <= filters_; f += gradient_filters)
      gradient_filter_block<gradient_filters>(work, f);
    for (; f < filters_; ++f) gradient_filter_block<1>(work, f);
  }

  /// gradient[f * stride + t] = the workspace's sums for filter f and tap t, each summed over
  /// its packet's lanes.
  void sum_gradient(const workspace& work, S* gradient, Index stride) const {
    for (Index f = 0; f < filters_; ++f)
      for (Index t = 0; t < taps(); ++t)
        gradient[f * stride + t] = Eigen::internal::predux(
            Eigen::internal::ploadu<Packet>(work.sums + (f * taps() + t) * lanes));
  }

 private:
  /// Copies the image into the interior of the padded image, whose border stays zero.
  void pad(const S* image, S* padded) const {
    for (Index c = 0; c < input_.channels; ++c)
      for (Index i = 0; i < input_.height; ++i)
        copy_row(image + (c * input_.height + i) * input_.width, input_.width,
                 padded + (c * padded_height_ + i + padding_) * padded_width_ + padding_,
                 identity);
  }

  static constexpr auto identity = [](const auto& p) { return p; };

  /// to[0, count) = map(from[0, count)) a packet at a time, the last packet overlapping the one
  /// before when count is not a multiple of it (rows of 28 are 16 + 16 floats, 4 of them
  /// written twice) rather than entry by entry.
  template <class Map>
  static void copy_row(const S* from, Index count, S* to, const Map& map) {
    using Eigen::internal::ploadu, Eigen::internal::pstoreu;
    if (count < lanes) {
      for (Index k = 0; k < count; ++k) to[k] = map(from[k]);
      return;
    }
    Index k = 0;
    for (; k + lanes <= count; k += lanes) pstoreu(to + k, map(ploadu<Packet>(from + k)));
    if (k < count) pstoreu(to + count - lanes, map(ploadu<Packet>(from + count - lanes)));
  }

  /// Planes f to f + G of the positions [q, q + forward_packets * lanes).
  template <Index G>
  void forward_tile(const workspace& work, Index q, const S* weights, Index stride,
                    Index f) const {
    using namespace Eigen::internal;
    Packet sums[G][forward_packets];
    for (Index g = 0; g < G; ++g)
      for (Index b = 0; b < forward_packets; ++b) sums[g][b] = pset1<Packet>(S(0));
    for (Index t = 0; t < taps(); ++t) {
      const S* pixels = work.padded + q + offsets_[t];
      Packet x[forward_packets];
      for (Index b = 0; b < forward_packets; ++b) x[b] = ploadu<Packet>(pixels + b * lanes);
      for (Index g = 0; g < G; ++g) {
        const Packet w = pset1<Packet>(weights[g * stride + t]);
        for (Index b = 0; b < forward_packets; ++b) sums[g][b] = pmadd(x[b], w, sums[g][b]);
      }
    }
    for (Index g = 0; g < G; ++g)
      for (Index b = 0; b < forward_packets; ++b)
        pstoreu(work.planes + (f + g) * positions_ + q + b * lanes, sums[g][b]);
  }

  template <Index G>
  void gradient_filter_block(const workspace& work, Index f) const {
    Index t = 0;
    for (; t + gradient_taps <= taps(); t += gradient_taps)
      gradient_tile<G, gradient_taps>(work, f, t);
    for (; t < taps(); ++t) gradient_tile<G, 1>(work, f, t);
  }

  /// The sums of filters f to f + G and taps t to t + T over every position.
  template <Index G, Index T>
  void gradient_tile(const workspace& work, Index f, Index t) const {
    using namespace Eigen::internal;
    Packet sums[T][G];
    for (Index k = 0; k < T; ++k)
      for (Index g = 0; g < G; ++g)
        sums[k][g] = ploadu<Packet>(work.sums + ((f + g) * taps() + t + k) * lanes);
    const S* pixels[T];
    for (Index k = 0; k < T; ++k) pixels[k] = work.padded + offsets_[t + k];
    const S* const planes = work.planes + f * positions_;
    for (Index q = 0; q < positions_; q += lanes) {
      Packet signal[G];
      for (Index g = 0; g < G; ++g) {
        signal[g] = ploadu<Packet>(planes + g * positions_ + q);
        keep_in_register(signal[g]);
      }
      for (Index k = 0; k < T; ++k) {
        Packet x = ploadu<Packet>(pixels[k] + q);
        keep_in_register(x);
        for (Index g = 0; g < G; ++g) sums[k][g] = pmadd(x, signal[g], sums[k][g]);
      }
    }
    for (Index k = 0; k < T; ++k)
      for (Index g = 0; g < G; ++g)
        pstoreu(work.sums + ((f + g) * taps() + t + k) * lanes, sums[k][g]);
  }

  /// Makes the compiler hold `value` in a register instead of reading memory at each use: GCC
  /// otherwise folds the loads of the gradient's operands into every multiply-add that uses
  /// them, and its loop then waits on loads (twice the time at LeNet-5's conv1).
  static void keep_in_register([[maybe_unused]] Packet& value) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    asm("" : "+v"(value));
#endif
  }

  image_shape input_;
  Index padding_, filters_, padded_width_, padded_height_;
  image_shape output_;
  /// Flat positions computed per plane (a multiple of the forward tile), and the padded
  /// image's length including the zeros that the last positions' taps read past it.
  Index positions_ = 0, padded_size_ = 0;
  std::vector<Index> offsets_;
};

}  // namespace bilevel::detail
