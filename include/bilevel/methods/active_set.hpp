#pragma once
/// \file
/// The bookkeeping of an inner solver that retires its converged samples (an active set,
/// docs/methods.md §5.6b): the samples it still iterates on are gathered into the leading
/// columns of its buffers, so that every product and elementwise pass runs on them alone. This
/// records which sample each position holds and keeps the labels in that order; the solver
/// exchanges its own per-sample buffers along, and puts every sample back at the end.

#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/types.hpp"

namespace bilevel::detail {

/// The leading `width` samples of a per-sample buffer (columns of a matrix, entries of a row):
/// the ones an active-set solver still iterates on.
template <class Buffer>
auto active_columns(Buffer& buffer, Index width) {
  if constexpr (std::remove_const_t<Buffer>::RowsAtCompileTime == 1)
    return buffer.head(width);
  else
    return buffer.leftCols(width);
}

template <Scalar S>
class sample_order {
 public:
  /// A new solve: every sample in its own position; y's columns are the labels.
  void start(const MatrixCRef<S>& y) {
    labels_ = y;
    order_.resize(std::size_t(y.cols()));
    std::iota(order_.begin(), order_.end(), Index(0));
    positions_ = order_;
  }

  /// The labels of the first `width` positions.
  MatrixCRef<S> labels(Index width) const { return labels_.leftCols(width); }

  /// Records an exchange of positions p and q (the solver exchanges its own buffers).
  void swap(Index p, Index q) {
    std::swap(order_[std::size_t(p)], order_[std::size_t(q)]);
    positions_[std::size_t(order_[std::size_t(p)])] = p;
    positions_[std::size_t(order_[std::size_t(q)])] = q;
    labels_.col(p).swap(labels_.col(q));
  }

  /// The mean of per-position values summed in the samples' own order, so that it does not
  /// depend on how the solver has reordered them (a sum of values that each never increase
  /// then never increases either).
  S mean(const RowVector<S>& values) const {
    S sum = 0;
    for (const Index p : positions_) sum += values(p);
    return sum / S(positions_.size());
  }

  /// Puts every sample back in its own position by calling exchange(p, q), which must exchange
  /// the solver's buffers and call swap(p, q), once per exchange needed.
  template <class Exchange>
  void restore(Exchange&& exchange) {
    for (Index p = 0; p < Index(order_.size()); ++p)
      while (order_[std::size_t(p)] != p) exchange(p, order_[std::size_t(p)]);
  }

 private:
  std::vector<Index> order_;      ///< order_[p]: the sample at position p
  std::vector<Index> positions_;  ///< positions_[j]: the position of sample j
  Matrix<S> labels_;
};

}  // namespace bilevel::detail
