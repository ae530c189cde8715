#pragma once
/// \file
/// A matrix packed once for many products with narrow batches. Eigen's matrix product copies both
/// factors into the panel layout of its kernel on every call; with a batch of a few dozen columns
/// or fewer the copy of the left factor (the weights, rows x depth) is a large share of the
/// product's time (up to 40% at 5 columns). An inner solver multiplies by the same weights hundreds
/// of times per batch, at widths that fall as its samples retire, so it packs them once
/// (layers/packed_maps.hpp) and each product packs only the batch. The kernel, the packing and the
/// blocking are Eigen 3.4's own (GeneralBlockPanelKernel.h), so the arithmetic is Eigen's; only the
/// left factor's packing moves out of the loop. With another Eigen than 3.4, whose internals may
/// differ, the class keeps a plain copy of the matrix and multiplies by it.

#include <Eigen/Core>
#include <algorithm>

#include "error.hpp"
#include "parallel.hpp"
#include "types.hpp"

namespace bilevel::detail {

#if EIGEN_WORLD_VERSION == 3 && EIGEN_MAJOR_VERSION == 4
template <Scalar S>
class packed_matrix {
 public:
  Index rows() const { return rows_; }
  Index depth() const { return depth_; }

  /// Packs A (a matrix, or a matrix's transpose()) for products with up to `max_cols` columns,
  /// in the blocking Eigen chooses for that width. Allocates only when A or the width grow.
  template <class Factor>
  void pack(const Factor& a, Index max_cols) {
    rows_ = a.rows();
    depth_ = a.cols();
    max_cols_ = std::max<Index>(max_cols, 1);
    Index kc = depth_, mc = rows_, nc = max_cols_;
    Eigen::internal::computeProductBlockingSizes<S, S, 1, Index>(kc, mc, nc, 1);
    depth_block_ = std::max<Index>(kc, 1);
    row_block_ = std::max<Index>(mc, 1);
    // Every panel starts aligned: the kernel loads the packed left factor with aligned loads.
    Index size = 0;
    for_each_panel([&](Index, Index rows, Index, Index depth) {
      size += aligned(rows * depth);
    });
    if (panels_.size() < size) panels_.resize(size);
    using Mapper = Eigen::internal::const_blas_data_mapper<S, Index, storage_order<Factor>()>;
    Eigen::internal::gemm_pack_lhs<S, Index, Mapper, Traits::mr, Traits::LhsProgress,
                                   typename Traits::LhsPacket4Packing, storage_order<Factor>()>
        pack_panel;
    const Mapper source(a.data(), a.outerStride());
    S* panel = panels_.data();
    for_each_panel([&](Index row, Index rows, Index column, Index depth) {
      pack_panel(panel, source.getSubMapper(row, column), depth, rows);
      panel += aligned(rows * depth);
    });
    const Index batch_size = aligned(depth_block_) * max_cols_;
    if (batch_.size() < batch_size) batch_.resize(batch_size);
  }

  /// out = scale A x, or out += scale A x with `add`; x of at most the packed width of
  /// columns. Columns are split over Eigen's threads in blocks of the kernel's width, so each
  /// column's sums run in the same order however the batch is split.
  void multiply(const MatrixCRef<S>& x, MatrixRef<S> out, S scale, bool add = false) {
    require(x.rows() == depth_ && x.cols() <= max_cols_, "packed_matrix::multiply", "x",
            parts(depth_, " x <= ", max_cols_), parts(x.rows(), " x ", x.cols()));
    require_shape("packed_matrix::multiply", "out", rows_, x.cols(), out.rows(), out.cols());
    if (!add) out.setZero();  // the kernel adds into its output
    const Index cost = std::max<Index>(rows_ * depth_, 1);
    parallel_ranges(x.cols(), cost, Traits::nr, [&](Index begin, Index end) {
      multiply_columns(x, out, scale, begin, end - begin);
    });
  }

 private:
  using Traits = Eigen::internal::gebp_traits<S, S>;

  template <class Factor>
  static constexpr int storage_order() {
    return Factor::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
  }

  /// Rounds a count of scalars up to Eigen's largest alignment.
  static Index aligned(Index count) {
    constexpr Index unit = std::max<Index>(1, EIGEN_MAX_ALIGN_BYTES / Index(sizeof(S)));
    return (count + unit - 1) / unit * unit;
  }

  /// body(row, rows, column, depth) for each panel, in the order they are stored and used:
  /// blocks of depth, and within each the blocks of rows.
  template <class Body>
  void for_each_panel(const Body& body) const {
    for (Index column = 0; column < depth_; column += depth_block_)
      for (Index row = 0; row < rows_; row += row_block_)
        body(row, std::min(row_block_, rows_ - row), column,
             std::min(depth_block_, depth_ - column));
  }

  void multiply_columns(const MatrixCRef<S>& x, MatrixRef<S> out, S scale, Index first,
                        Index count) {
    using Source = Eigen::internal::const_blas_data_mapper<S, Index, Eigen::ColMajor>;
    using Target = Eigen::internal::blas_data_mapper<S, Index, Eigen::ColMajor>;
    Eigen::internal::gemm_pack_rhs<S, Index, Source, Traits::nr, Eigen::ColMajor> pack_batch;
    Eigen::internal::gebp_kernel<S, S, Index, Target, Traits::mr, Traits::nr> kernel;
    const Source source(x.data(), x.outerStride());
    const Target target(out.data(), out.outerStride());
    // This range's own part of the batch buffer, aligned like the whole.
    S* batch = batch_.data() + aligned(depth_block_) * first;
    const S* panel = panels_.data();
    for (Index column = 0; column < depth_; column += depth_block_) {
      const Index depth = std::min(depth_block_, depth_ - column);
      pack_batch(batch, source.getSubMapper(column, first), depth, count);
      for (Index row = 0; row < rows_; row += row_block_) {
        const Index rows = std::min(row_block_, rows_ - row);
        kernel(target.getSubMapper(row, first), panel, batch, rows, depth, count, scale);
        panel += aligned(rows * depth);
      }
    }
  }

  Index rows_ = 0, depth_ = 0, max_cols_ = 1, depth_block_ = 1, row_block_ = 1;
  Vector<S> panels_, batch_;
};
#else
template <Scalar S>
class packed_matrix {
 public:
  Index rows() const { return copy_.rows(); }
  Index depth() const { return copy_.cols(); }
  template <class Factor>
  void pack(const Factor& a, Index) {
    copy_ = a;
  }
  void multiply(const MatrixCRef<S>& x, MatrixRef<S> out, S scale, bool add = false) {
    require_shape("packed_matrix::multiply", "out", copy_.rows(), x.cols(), out.rows(),
                  out.cols());
    require(x.rows() == copy_.cols(), "packed_matrix::multiply", "x rows", copy_.cols(), x.rows());
    if (add)
      out.noalias() += scale * copy_ * x;
    else
      out.noalias() = scale * copy_ * x;
  }

 private:
  Matrix<S> copy_;
};
#endif

}  // namespace bilevel::detail
