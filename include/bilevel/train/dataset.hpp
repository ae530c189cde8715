#pragma once
/// \file
/// A classification data set in the library's layout: inputs column-wise, one-hot targets (the
/// error rate compares the largest output with the largest target entry).

#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace bilevel {

template <Scalar S>
struct dataset {
  Matrix<S> x;              ///< n_0 x N
  Matrix<S> y;  ///< classes x N, one-hot

  Index size() const { return x.cols(); }
};

/// Builds a data set from inputs and labels; every label must lie in [0, classes).
template <Scalar S>
dataset<S> make_dataset(Matrix<S> x, const std::vector<int>& labels, Index classes) {
  detail::require(Index(labels.size()) == x.cols(), "make_dataset", "the number of labels",
                  detail::parts("one per input column (", x.cols(), ")"), labels.size());
  dataset<S> set{std::move(x), Matrix<S>::Zero(classes, Index(labels.size()))};
  for (std::size_t j = 0; j < labels.size(); ++j) {
    const int label = labels[j];
    detail::require(label >= 0 && label < classes, "make_dataset",
                    detail::parts("label ", j), detail::parts("in [0, ", classes, ")"), label);
    set.y(label, Index(j)) = 1;
  }
  return set;
}

/// Columns [begin, begin + count) of a data set.
template <Scalar S>
dataset<S> slice(const dataset<S>& set, Index begin, Index count) {
  detail::require(begin >= 0 && count >= 0 && begin + count <= set.size(), "slice",
                  "the range", detail::parts("within [0, ", set.size(), "]"),
                  detail::parts("[", begin, ", ", begin + count, ")"));
  return {set.x.middleCols(begin, count), set.y.middleCols(begin, count)};
}

}  // namespace bilevel
