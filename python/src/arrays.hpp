#pragma once
// NumPy arrays as the library's matrices. Samples are rows in Python and columns in the
// library: a C-contiguous (B, n) array is, byte for byte, the column-major n x B matrix, so it
// is used in place; an array of another dtype or layout is converted once (one pass over it).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bilevel/core/error.hpp"
#include "bilevel/core/types.hpp"

namespace bilevel::python {

namespace py = pybind11;

/// "(50, 784)": a NumPy shape as Python prints it.
inline std::string shape_text(const py::array& array) {
  std::string text = "(";
  for (py::ssize_t d = 0; d < array.ndim(); ++d)
    text += detail::concat(d ? ", " : "", array.shape(d));
  return text + (array.ndim() == 1 ? ",)" : ")");
}

/// `object` as a C-contiguous array of S: itself when it is one, else a converted copy.
/// Throws TypeError naming `where` and `name` when it is not numeric.
template <Scalar S>
py::array_t<S, py::array::c_style | py::array::forcecast> contiguous(const py::handle& object,
                                                                      std::string_view where,
                                                                      std::string_view name) {
  const py::array as_array = py::array::ensure(object);
  if (!as_array || as_array.dtype().kind() == 'O' || as_array.dtype().kind() == 'U' ||
      as_array.dtype().kind() == 'S' || as_array.dtype().kind() == 'c')
    throw py::type_error(detail::concat(where, ": ", name,
                                        " must be an array of real numbers, got ",
                                        std::string(py::str(py::type::of(object)))));
  auto converted = py::array_t<S, py::array::c_style | py::array::forcecast>::ensure(as_array);
  if (!converted) throw py::error_already_set();
  return converted;
}

/// A (B, n) array of B samples, one per row, seen as the library's n x B matrix.
template <Scalar S>
class sample_rows {
 public:
  /// Throws ShapeError (shape_error) unless `object` is 2-D with `features` columns.
  sample_rows(const py::handle& object, Index features, std::string_view where,
              std::string_view name)
      : array_(contiguous<S>(object, where, name)) {
    if (array_.ndim() != 2 || array_.shape(1) != features)
      throw shape_error(detail::concat(where, ": ", name, " must have shape (B, ", features,
                                       "), one sample per row; got ", shape_text(array_)));
  }

  Index samples() const { return Index(array_.shape(0)); }
  Eigen::Map<const Matrix<S>> matrix() const {
    return {array_.data(), Index(array_.shape(1)), Index(array_.shape(0))};
  }

 private:
  py::array_t<S, py::array::c_style | py::array::forcecast> array_;
};

/// The targets of `samples` samples for `classes` outputs as the library's classes x B matrix:
/// from labels, a 1-D array of integers in [0, classes) (one-hot), or from a (B, classes) array.
template <Scalar S>
Matrix<S> targets(const py::handle& object, Index samples, Index classes,
                  std::string_view where) {
  const py::array array = py::array::ensure(object);
  if (array && array.ndim() == 1) {
    const char kind = array.dtype().kind();
    if (kind != 'i' && kind != 'u' && kind != 'b')
      throw py::type_error(detail::concat(where, ": labels y must be integers, got dtype ",
                                          py::str(array.dtype().attr("name")).cast<std::string>()));
    if (array.shape(0) != samples)
      throw shape_error(detail::concat(where, ": y must hold one label per sample (", samples,
                                       "); got shape ", shape_text(array)));
    const auto labels =
        py::array_t<long long, py::array::c_style | py::array::forcecast>::ensure(array);
    Matrix<S> onehot = Matrix<S>::Zero(classes, samples);
    for (Index j = 0; j < samples; ++j) {
      const long long label = labels.at(j);
      if (label < 0 || label >= classes)
        throw data_error(detail::concat(where, ": label ", j, " is ", label, ", expected 0 to ",
                                        classes - 1));
      onehot(Index(label), j) = S(1);
    }
    return onehot;
  }
  const sample_rows<S> rows(object, classes, where, "y (targets, or 1-D labels)");
  if (rows.samples() != samples)
    throw shape_error(detail::concat(where, ": y must have one row per sample of x (", samples,
                                     "); got ", rows.samples(), " rows"));
  return rows.matrix();
}

/// A NumPy array that owns `value` (moved to the heap), C-contiguous of `shape`.
template <class Dense>
py::array owning_array(Dense&& value, std::vector<py::ssize_t> shape) {
  using S = typename std::decay_t<Dense>::Scalar;
  auto* held = new std::decay_t<Dense>(std::forward<Dense>(value));
  const py::capsule owner(held, [](void* p) { delete static_cast<std::decay_t<Dense>*>(p); });
  return py::array_t<S>(std::move(shape), held->data(), owner);
}

/// The library's n x B matrix of B samples as a (B, n) array that owns it.
template <Scalar S>
py::array rows_of(Matrix<S>&& columns) {
  const py::ssize_t n = columns.rows(), b = columns.cols();
  return owning_array(std::move(columns), {b, n});
}

}  // namespace bilevel::python
