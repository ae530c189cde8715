#pragma once
/// \file
/// 2-D convolution as a linear map of a batch of images (layers/image.hpp's layout): F filters
/// of C x K x K weights, taken every `stride` pixels over the input zero-padded by `padding`,
///
///   a(f, i, j) = b_f + sum_{c, u, v} w_f(c, u, v) x(c, i*stride - padding + u,
///                                                   j*stride - padding + v),
///
/// as deep-learning frameworks define it (cross-correlation). Per image, im2col: the patches
/// form a P x (C*K*K) matrix X_col, one output position per row (P = output height x width),
/// and with the filters as the columns of a (C*K*K) x F matrix Wc (filter f's weights in
/// (c, u, v) order, u the kernel row: PyTorch's (F, C, K, K) layout, read column-major),
///
///   A = X_col Wc + 1 b^T                  (P x F, which is the output image's column),
///   A^T g:   X_col^grad = G Wc^T, scattered back onto the pixels its entries were read from,
///   dWc = sum over images X_col^T G,      db = sum over images and positions of G,
///
/// for an output-side signal g (its image as the P x F matrix G). Each is one matrix product
/// per image, the images split across threads (core/parallel.hpp), except where X_col would be
/// long and thin at stride 1 (a first layer): there the forward map and the weight gradient are
/// computed directly, without patches (layers/flat_correlation.hpp). The patch matrix lives in a
/// buffer of each thread, reused across calls (no allocation once it has grown), so one object
/// may be used from several threads. The weight gradient is summed in fixed chunks of images,
/// so any number of threads gives the same bits.

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "flat_correlation.hpp"
#include "image.hpp"
#include "map.hpp"

namespace bilevel {

template <Scalar S>
class conv2d {
  using Packet = typename Eigen::internal::packet_traits<S>::type;
  static constexpr Index lanes = Eigen::internal::packet_traits<S>::size;

 public:
  struct geometry {
    image_shape input;
    Index filters = 1, kernel = 1, stride = 1, padding = 0;
  };

  /// Throws config_error for non-positive extents, filters, kernel or stride or a negative
  /// padding, and shape_error when the kernel is larger than the padded input.
  explicit conv2d(const geometry& shape) : shape_(shape) {
    constexpr std::string_view function = "conv2d";
    detail::require_image_shape(function, "the input", shape.input);
    detail::require(shape.filters > 0, function, "the number of filters", "> 0", shape.filters);
    detail::require(shape.kernel > 0, function, "the kernel size", "> 0", shape.kernel);
    detail::require(shape.stride > 0, function, "the stride", "> 0", shape.stride);
    detail::require(shape.padding >= 0, function, "the padding", ">= 0", shape.padding);
    output_ = {shape.filters,
               detail::window_positions(function, "row", shape.input.height, shape.kernel,
                                        shape.stride, shape.padding),
               detail::window_positions(function, "column", shape.input.width, shape.kernel,
                                        shape.stride, shape.padding)};
    if (shape.stride == 1 && long_and_thin_patches())
      direct_.emplace(shape.input, shape.kernel, shape.padding, shape.filters);
    if (shape.stride == 1 && shape.padding == 0)
      windows_inside_.emplace(shape.kernel, row_span(), output_.width);
  }

  const geometry& shape() const { return shape_; }
  const image_shape& input() const { return shape_.input; }
  const image_shape& output() const { return output_; }
  Index inputs() const { return shape_.input.size(); }
  Index outputs() const { return output_.size(); }
  /// Wc is patch_size() x filters; the bias has one entry per filter.
  Index patch_size() const { return shape_.input.channels * shape_.kernel * shape_.kernel; }
  Index weight_rows() const { return patch_size(); }
  Index weight_cols() const { return shape_.filters; }
  Index bias_size() const { return shape_.filters; }
  /// PyTorch's fans: C*K*K inputs and F*K*K outputs per weight.
  Index fan_in() const { return patch_size(); }
  Index fan_out() const { return shape_.filters * shape_.kernel * shape_.kernel; }

  /// m ||Wc||_F^2 >= ||A||_2^2 with m = ceil(K / stride)^2, the most windows that read one
  /// pixel: ||A x||^2 sums ||Wc^T patch||^2 over windows, each at most ||Wc||_F^2 ||patch||^2,
  /// and the patches' squared norms add up to at most m ||x||^2.
  template <class Weights>
  S squared_norm_bound(const Weights& weights) const {
    return S(detail::windows_per_pixel(shape_.kernel, shape_.stride)) * weights.squaredNorm();
  }

  /// out = A x + b for every column of x (inputs() x B into outputs() x B).
  void apply(const MatrixCRef<S>& weights, const Eigen::Ref<const Vector<S>>& bias,
             const MatrixCRef<S>& x, MatrixRef<S> out) const {
    detail::require_shape("conv2d::apply", "the bias", shape_.filters, 1, bias.rows(), 1);
    forward("conv2d::apply", weights, &bias, x, out);
  }

  /// out = A x without the bias (the linear part, for directions and differences).
  void apply_linear(const MatrixCRef<S>& weights, const MatrixCRef<S>& x,
                    MatrixRef<S> out) const {
    forward("conv2d::apply_linear", weights, nullptr, x, out);
  }

  /// out = scale A^T g for every column of g (outputs() x B into inputs() x B), or out +=
  /// that with output_mode::add; the bias is not part of the linear map.
  void apply_transpose(const MatrixCRef<S>& weights, const MatrixCRef<S>& g, MatrixRef<S> out,
                       S scale = S(1), output_mode mode = output_mode::assign) const {
    check_weights("conv2d::apply_transpose", weights);
    detail::require_sample_columns("conv2d::apply_transpose", "g", outputs(), g.rows(), g.cols());
    detail::require_shape("conv2d::apply_transpose", "out", inputs(), g.cols(), out.rows(),
                          out.cols());
    for_image_blocks(g.cols(), [&](Index first, Index end) {
      MatrixMap<S> patches = patch_buffer();
      for (Index j = first; j < end; ++j) {
        const ConstMatrixMap<S> signal(g.col(j).data(), output_.pixels(), shape_.filters);
        patches.noalias() = scale * signal * weights.transpose();
        auto column = out.col(j);
        if (mode == output_mode::assign) column.setZero();
        if (windows_inside_)
          scatter_rows(patches, column);
        else
          scatter_patches(patches, column);
      }
    });
  }

  /// weight_gradient = scale sum_j X_col(x_j)^T G_j and bias_gradient = scale sum_j G_j^T 1:
  /// the gradient of <g, A x + b> in Wc and b, times `scale` (1 / B for a batch mean).
  void parameter_gradient(const MatrixCRef<S>& x, const MatrixCRef<S>& g, S scale,
                          MatrixRef<S> weight_gradient,
                          Eigen::Ref<Vector<S>> bias_gradient) const {
    constexpr std::string_view function = "conv2d::parameter_gradient";
    detail::require_shape(function, "the bias gradient", shape_.filters, 1, bias_gradient.rows(),
                          1);
    weight_gradient.setZero();
    bias_gradient.setZero();
    accumulate_gradient(function, x, g, scale, weight_gradient, &bias_gradient);
  }

  /// weight_gradient += scale sum_j X_col(x_j)^T G_j (a second term of a gradient, no bias).
  void add_weight_gradient(const MatrixCRef<S>& x, const MatrixCRef<S>& g, S scale,
                           MatrixRef<S> weight_gradient) const {
    accumulate_gradient("conv2d::add_weight_gradient", x, g, scale, weight_gradient, nullptr);
  }

 private:
  void forward(std::string_view function, const MatrixCRef<S>& weights,
               const Eigen::Ref<const Vector<S>>* bias, const MatrixCRef<S>& x,
               MatrixRef<S> out) const {
    check_weights(function, weights);
    detail::require_sample_columns(function, "x", inputs(), x.rows(), x.cols());
    detail::require_shape(function, "out", outputs(), x.cols(), out.rows(), out.cols());
    if (direct_) {
      for_image_blocks(x.cols(), [&](Index first, Index end) {
        const auto work = direct_->start();
        for (Index j = first; j < end; ++j)
          direct_->forward(work, x.col(j).data(), weights.data(), weights.outerStride(),
                           bias ? bias->data() : nullptr, out.col(j).data());
      });
      return;
    }
    for_image_blocks(x.cols(), [&](Index first, Index end) {
      MatrixMap<S> patches = patch_buffer();
      clear_padding(patches);
      for (Index j = first; j < end; ++j) {
        gather_patches(x.col(j), patches);
        MatrixMap<S> image(out.col(j).data(), output_.pixels(), shape_.filters);
        image.noalias() = patches * weights;
        if (bias) image.rowwise() += bias->transpose();
      }
    });
  }

  void accumulate_gradient(std::string_view function, const MatrixCRef<S>& x,
                           const MatrixCRef<S>& g, S scale, MatrixRef<S> weight_gradient,
                           Eigen::Ref<Vector<S>>* bias_gradient) const {
    detail::require_sample_columns(function, "x", inputs(), x.rows(), x.cols());
    detail::require_shape(function, "g", outputs(), x.cols(), g.rows(), g.cols());
    check_weights(function, weight_gradient);
    // Fixed chunks of images, each summed into its own slot and the slots added in order:
    // the same result on any number of threads.
    const Index chunks = (x.cols() + gradient_chunk - 1) / gradient_chunk;
    const Index weight_count = weight_rows() * weight_cols(), slot = weight_count + bias_size();
    S* const partials = gradient_slots(chunks * slot);
    detail::parallel_ranges_of_products(chunks, gradient_chunk * output_.pixels() * patch_size(),
                                        1, [&](Index first, Index end) {
      // im2col's patches, their padding zeroed once for all the chunks of this thread.
      MatrixMap<S> patches = direct_ ? MatrixMap<S>(nullptr, 0, 0) : patch_buffer();
      if (!direct_) clear_padding(patches);
      for (Index chunk = first; chunk < end; ++chunk) {
        MatrixMap<S> weights(partials + chunk * slot, weight_rows(), weight_cols());
        VectorMap<S> bias(partials + chunk * slot + weight_count, bias_size());
        const Index begin = chunk * gradient_chunk;
        const Index last = std::min(x.cols(), begin + gradient_chunk);
        if (direct_)
          sum_direct_gradient(x, g, begin, last, weights);
        else
          sum_im2col_gradient(x, g, begin, last, patches, weights);
        bias.setZero();
        for (Index j = begin; j < last; ++j)
          bias += ConstMatrixMap<S>(g.col(j).data(), output_.pixels(), shape_.filters)
                      .colwise().sum().transpose();
      }
    });
    for (Index chunk = 0; chunk < chunks; ++chunk) {
      const S* const sums = partials + chunk * slot;
      weight_gradient += scale * ConstMatrixMap<S>(sums, weight_rows(), weight_cols());
      if (bias_gradient)
        *bias_gradient += scale * ConstVectorMap<S>(sums + weight_count, bias_size());
    }
  }

  /// weights = sum_{j in [first, last)} X_col(x_j)^T G_j, by im2col into `patches` (whose
  /// padding entries are zero).
  void sum_im2col_gradient(const MatrixCRef<S>& x, const MatrixCRef<S>& g, Index first,
                           Index last, MatrixMap<S>& patches, MatrixMap<S>& weights) const {
    weights.setZero();
    for (Index j = first; j < last; ++j) {
      gather_patches(x.col(j), patches);
      const ConstMatrixMap<S> signal(g.col(j).data(), output_.pixels(), shape_.filters);
      if (long_and_thin_patches()) {
        for (Index f = 0; f < shape_.filters; ++f)
          weights.col(f).noalias() += patches.transpose() * signal.col(f);
      } else {
        weights.noalias() += patches.transpose() * signal;
      }
    }
  }

  /// The same sum by the direct correlation (layers/flat_correlation.hpp).
  void sum_direct_gradient(const MatrixCRef<S>& x, const MatrixCRef<S>& g, Index first,
                           Index last, MatrixMap<S>& weights) const {
    const auto work = direct_->start();
    for (Index j = first; j < last; ++j)
      direct_->add_gradient(work, x.col(j).data(), g.col(j).data());
    direct_->sum_gradient(work, weights.data(), weights.rows());
  }

  /// Images per partial sum of the parameter gradient.
  static constexpr Index gradient_chunk = 8;

  /// The calling thread's storage for `size` numbers of partial sums (grows only).
  static S* gradient_slots(Index size) {
    thread_local Vector<S> storage;
    if (storage.size() < size) storage.resize(size);
    return storage.data();
  }

  /// Calls body(first, end) on blocks of the images [0, count) in parallel (core/parallel.hpp):
  /// every image is independent, and each thread uses its own patch buffer. The products
  /// inside stay on one thread however few the images (parallel_ranges_of_products).
  template <class Body>
  void for_image_blocks(Index count, const Body& body) const {
    detail::parallel_ranges_of_products(count, output_.pixels() * patch_size(), 1, body);
  }

  /// Whether X_col has many rows (output positions) and few columns, as at a first layer
  /// (LeNet-5's conv1, 784 x 25). At stride 1 such a layer is convolved directly; at other
  /// strides X_col^T G is one matrix-vector product per filter: Eigen's matrix product packs
  /// X_col anew for every image, which costs more than streaming it once per filter (twice as
  /// fast at conv1's shape, benchmarks/layers.cpp; at 100 x 150 slower).
  bool long_and_thin_patches() const { return output_.pixels() >= 16 * patch_size(); }

  /// The calling thread's P x (C*K*K) patch matrix, in storage shared by every conv2d object of
  /// this scalar type; it only grows, so convolutions of other shapes taking turns do not
  /// reallocate it.
  MatrixMap<S> patch_buffer() const {
    thread_local Vector<S> storage;
    // scatter_rows reads up to a row's span past the last column (lanes it masks out).
    const Index size = output_.pixels() * patch_size() + row_span();
    if (storage.size() < size) storage.resize(size);
    return MatrixMap<S>(storage.data(), output_.pixels(), patch_size());
  }

  /// Zeroes the patch entries that read the padding, which no image overwrites (all of them:
  /// one pass per call, not per image).
  void clear_padding(MatrixMap<S> patches) const {
    if (shape_.padding > 0) patches.setZero();
  }

  template <class Weights>
  void check_weights(std::string_view function, const Weights& weights) const {
    detail::require_shape(function, "the weights (C*K*K x filters)", patch_size(),
                          shape_.filters, weights.rows(), weights.cols());
  }

  /// Calls visit(pixel, p, entry, columns, rows) for every patch column entry = (c*K + u)*K + v:
  /// the output positions whose window entry reads an input pixel (not the padding) form a
  /// block of `rows` output rows by `columns` output columns, starting at position p, and they
  /// read the pixels from `pixel` on, `stride` apart within an input row and stride input rows
  /// apart. Output position i*OW + j reads pixel (c, i*stride - padding + u,
  /// j*stride - padding + v).
  template <class Visit>
  void for_each_block(const Visit& visit) const {
    const Index K = shape_.kernel, H = shape_.input.height, W = shape_.input.width;
    const Index stride = shape_.stride, padding = shape_.padding;
    const Index OH = output_.height, OW = output_.width;
    // The positions o with 0 <= o*stride - padding + offset < extent, as [first, last).
    const auto inside = [&](Index offset, Index extent, Index positions) {
      const Index reach = extent - 1 + padding - offset;
      const Index first = std::max<Index>(padding - offset + stride - 1, 0) / stride;
      const Index last = reach < 0 ? 0 : std::min(positions, reach / stride + 1);
      return std::pair{first, last};
    };
    for (Index u = 0; u < K; ++u) {
      const auto [top, bottom] = inside(u, H, OH);
      if (top >= bottom) continue;
      for (Index v = 0; v < K; ++v) {
        const auto [left, right] = inside(v, W, OW);
        if (left >= right) continue;
        for (Index c = 0; c < shape_.input.channels; ++c)
          visit((c * H + top * stride - padding + u) * W + left * stride - padding + v,
                top * OW + left, (c * K + u) * K + v, right - left, bottom - top);
      }
    }
  }

  /// Copies every block's pixels into `patches`, whose other (padding) entries must be 0. A
  /// block's rows are short (an output row, 10 pixels at LeNet-5's conv2): Eigen's assignment
  /// would copy them one entry at a time, so the rows are copied by hand, in whole packets
  /// where the rows follow each other in the patch column (conv2's forward map spent 105 us
  /// beside its products at batch 50 this way, 176 us in 8-entry moves and a tail).
  template <class Column>
  void gather_patches(const Column& image, MatrixMap<S> patches) const {
    const Index W = shape_.input.width, stride = shape_.stride, OW = output_.width;
    for_each_block([&](Index pixel, Index p, Index entry, Index columns, Index rows) {
      const S* from = image.data() + pixel;
      S* to = patches.col(entry).data() + p;
      Index i = 0;
      const Index span = (columns + lanes - 1) / lanes * lanes;
      if (stride == 1 && columns == OW && span <= OW + columns && span <= W + columns) {
        // Rows that fill the output's width follow each other in the patch column, so every
        // row but the last is copied in whole packets: what they write past the row, the next
        // row overwrites, and what they read past it lies within the image's next row.
        for (; i + 1 < rows; ++i, from += W, to += OW)
          for (Index k = 0; k < span; k += lanes)
            Eigen::internal::pstoreu(to + k, Eigen::internal::ploadu<Packet>(from + k));
      }
      for (; i < rows; ++i, from += stride * W, to += OW) {
        if (stride == 1)
          copy_row(from, columns, to);
        else
          for (Index j = 0; j < columns; ++j) to[j] = from[j * stride];
      }
    });
  }

  /// to[0, count) = from[0, count) in inlined 8-entry moves: a library call per row (memmove)
  /// costs more than the copy at rows of 10 to 28 entries.
  static void copy_row(const S* from, Index count, S* to) {
    using chunk = Eigen::Matrix<S, 8, 1>;
    for (; count >= 8; count -= 8, from += 8, to += 8)
      Eigen::Map<chunk>{to} = Eigen::Map<const chunk>{from};
    for (Index j = 0; j < count; ++j) to[j] = from[j];
  }

  /// Adds every block of `patches` onto the pixels it was read from.
  template <class Column>
  void scatter_patches(const MatrixMap<S>& patches, Column& image) const {
    const Index W = shape_.input.width, stride = shape_.stride, OW = output_.width;
    for_each_block([&](Index pixel, Index p, Index entry, Index columns, Index rows) {
      const S* from = patches.col(entry).data() + p;
      S* to = image.data() + pixel;
      for (Index i = 0; i < rows; ++i, from += OW, to += stride * W)
        for (Index j = 0; j < columns; ++j) to[j * stride] += from[j];
    });
  }

  /// An input row's length rounded up to whole packets.
  Index row_span() const { return (shape_.input.width + lanes - 1) / lanes * lanes; }

  /// For each kernel column v, the lanes x of an input row's packets that block v covers,
  /// v <= x < v + OW, as all-one bits (the others zero), to mask the rows scatter_rows reads.
  struct covered_lanes {
    covered_lanes(Index kernel, Index span, Index covered) {
      bits.resize(std::size_t(kernel * span));
      for (Index v = 0; v < kernel; ++v)
        std::memset(&bits[std::size_t(v * span + v)], 0xFF, std::size_t(covered) * sizeof(S));
    }
    std::vector<S> bits;
  };

  /// Adds the patches onto the image where every window lies inside it (stride 1, no padding:
  /// LeNet-5's conv2) in whole packets: the blocks v = 0..K-1 of a channel c and kernel row u
  /// add output row i onto the same input row i + u, shifted by v, so their sum is formed over
  /// the input row's packets, each block's lanes outside its columns masked to zero, for a
  /// tile of rows at once. Every pixel receives the same additions in the same order as block
  /// by block (plus zeros): kernel rows u in turn. Within one, the channels take turns tile by
  /// tile: a tile's packets reach into the first row of the next tile of its channel, and a
  /// load that overlaps a pending store in part waits for it.
  template <class Column>
  void scatter_rows(const MatrixMap<S>& patches, Column& image) const {
    for (Index u = 0; u < shape_.kernel; ++u) {
      Index i = 0;
      for (; i + rows_per_tile <= output_.height; i += rows_per_tile)
        for (Index c = 0; c < shape_.input.channels; ++c)
          scatter_tile<rows_per_tile>(patches, image, c, u, i);
      for (; i < output_.height; ++i)
        for (Index c = 0; c < shape_.input.channels; ++c) scatter_tile<1>(patches, image, c, u, i);
    }
  }

  static constexpr Index rows_per_tile = 8;

  /// scatter_rows for channel c, kernel row u and output rows i to i + T - 1. A row's packets
  /// reach into the rows after it, adding zeros there, so the rows are stored in order; where
  /// they would reach past the image's column (its last rows), the rows go block by block.
  template <Index T, class Column>
  void scatter_tile(const MatrixMap<S>& patches, Column& image, Index c, Index u,
                    Index i) const {
    using namespace Eigen::internal;
    const Index K = shape_.kernel, W = shape_.input.width, OW = output_.width;
    const Index P = output_.pixels(), span = row_span();
    const Index first = (c * shape_.input.height + u + i) * W;
    S* const row = image.data() + first;
    // Block v's entry for pixel x of row t: from[t * OW + v * (P - 1) + x].
    const S* const from = patches.col((c * K + u) * K).data() + i * OW;
    if (first + (T - 1) * W + span > image.size()) {
      for (Index t = 0; t < T; ++t)
        for (Index v = 0; v < K; ++v)
          for (Index j = 0; j < OW; ++j) row[t * W + j + v] += from[t * OW + v * P + j];
      return;
    }
    const S* const masks = windows_inside_->bits.data();
    for (Index k = 0; k < span; k += lanes) {
      Packet sums[T];
      for (Index t = 0; t < T; ++t) sums[t] = ploadu<Packet>(row + t * W + k);
      for (Index v = 0; v < K; ++v) {
        const Packet mask = ploadu<Packet>(masks + v * span + k);
        const S* const block = from + v * (P - 1) + k;
        for (Index t = 0; t < T; ++t)
          sums[t] = padd(sums[t], pand(ploadu<Packet>(block + t * OW), mask));
      }
      for (Index t = 0; t < T; ++t) pstoreu(row + t * W + k, sums[t]);
    }
  }

  geometry shape_;
  image_shape output_;
  /// The direct correlation, for stride 1 and long and thin patch matrices.
  std::optional<detail::flat_correlation<S>> direct_;
  /// scatter_rows' masks, where every window lies inside the image.
  std::optional<covered_lanes> windows_inside_;
};

}  // namespace bilevel
