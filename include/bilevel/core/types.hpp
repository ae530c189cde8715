#pragma once
/// \file
/// Core matrix types. A batch is stored column-wise: one sample per column (docs/methods.md §1).

#include <Eigen/Core>
#include <concepts>
#include <cstddef>

namespace bilevel {

using Index = Eigen::Index;

template <class S>
using Matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using Vector = Eigen::Matrix<S, Eigen::Dynamic, 1>;
template <class S>
using RowVector = Eigen::Matrix<S, 1, Eigen::Dynamic>;

/// Read-only view of a matrix or a block of columns, without copying.
template <class S>
using MatrixCRef = Eigen::Ref<const Matrix<S>>;
/// Writable view of a matrix or a block of columns.
template <class S>
using MatrixRef = Eigen::Ref<Matrix<S>>;
/// Read-only and writable views of a row of per-sample values, or of its leading samples.
template <class S>
using RowVectorCRef = Eigen::Ref<const RowVector<S>>;
template <class S>
using RowVectorRef = Eigen::Ref<RowVector<S>>;

/// Views of a slice of a flat parameter (or gradient) buffer as a matrix or vector.
template <class S>
using MatrixMap = Eigen::Map<Matrix<S>>;
template <class S>
using ConstMatrixMap = Eigen::Map<const Matrix<S>>;
template <class S>
using VectorMap = Eigen::Map<Vector<S>>;
template <class S>
using ConstVectorMap = Eigen::Map<const Vector<S>>;

/// The scalar types the library is written for.
template <class S>
concept Scalar = std::floating_point<S>;

}  // namespace bilevel
