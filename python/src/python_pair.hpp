#pragma once
// An activation pair written in Python (README "From Python"): vectorised NumPy functions of
// whole batches, (B, n) arrays with one sample per row, held as the columnwise form of
// activations/concept.hpp, so that every method calls Python once per batch operation.
//
// The library calls a pair from its parallel loops, where an exception must not escape: a
// Python error is recorded here, the operation's output filled with NaN, and the module raises
// the recorded error once the library returns (raise_pair_failures).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "arrays.hpp"
#include "bilevel/core/types.hpp"

namespace bilevel::python {

/// The callables of a Python pair; none where the user gave none.
struct python_functions {
  std::string name;
  py::object f, df, vjp, G, G_conj, inverse, prox_conj;
  std::mutex failure_lock;
  std::exception_ptr failure;  ///< the first error raised by a callable since the last check

  /// The recorded error, cleared.
  std::exception_ptr take_failure() {
    const std::lock_guard<std::mutex> guard(failure_lock);
    return std::exchange(failure, nullptr);
  }

  ~python_functions() {
    py::gil_scoped_acquire locked;  // the references (a Python error's too) drop under the GIL
    for (py::object* held : {&f, &df, &vjp, &G, &G_conj, &inverse, &prox_conj})
      *held = py::object();
    failure = nullptr;
  }
};

class python_pair {
 public:
  explicit python_pair(std::shared_ptr<python_functions> functions)
      : functions_(std::move(functions)) {}

  std::string name() const { return functions_->name; }
  python_functions& functions() const { return *functions_; }

  template <class S>
  void f(const MatrixCRef<S>& a, MatrixRef<S> z) const {
    call(functions_->f, "f", z, a);
  }
  /// J_f(a)^T v = f'(a) .* v for an elementwise f given df, or the user's vjp(a, v).
  template <class S>
  void vjp(const MatrixCRef<S>& a, const MatrixCRef<S>& v, MatrixRef<S> out) const {
    if (functions_->vjp) {
      call(functions_->vjp, "vjp", out, a, v);
    } else {
      call(functions_->df, "df", out, a);
      out.array() *= v.array();
    }
  }
  /// Per sample: the sum over units of the user's elementwise G (G*).
  template <class S>
  RowVector<S> G(const MatrixCRef<S>& a) const {
    return summed(functions_->G, "G", a);
  }
  template <class S>
  RowVector<S> G_conj(const MatrixCRef<S>& z) const {
    return summed(functions_->G_conj, "G_conj", z);
  }
  /// Some a with f(a) = z: the user's inverse, or bisection on the monotone f.
  template <class S>
  void grad_conj(const MatrixCRef<S>& z, MatrixRef<S> out) const {
    if (functions_->inverse) {
      call(functions_->inverse, "inverse", out, z);
      return;
    }
    solve_monotone(S(0), z, out);
  }
  /// argmin_z t G*(z) + |z - v|^2 / 2 = v - t a with t a + f(a) = v (Moreau's identity), or
  /// the user's prox_conj(v, t).
  template <class S>
  void prox_conj(const MatrixCRef<S>& v, S t, MatrixRef<S> out) const {
    if (functions_->prox_conj) {
      call(functions_->prox_conj, "prox_conj", out, v, t);
      return;
    }
    Matrix<S> a(v.rows(), v.cols());
    solve_monotone(t, v, MatrixRef<S>(a));
    out = v - t * a;
  }

 private:
  /// A (B, n) read-only NumPy view of the n x B block, valid during the call only.
  template <class S>
  static py::array rows(const MatrixCRef<S>& m) {
    py::array_t<S> view({py::ssize_t(m.cols()), py::ssize_t(m.rows())},
                        {py::ssize_t(m.outerStride() * sizeof(S)), py::ssize_t(sizeof(S))},
                        m.data(), py::capsule(m.data(), [](void*) {}));  // a base: no copy
    view.attr("flags").attr("writeable") = false;
    return view;
  }
  template <class S>
  static py::object argument(const MatrixCRef<S>& m) {
    return rows(m);
  }
  template <class S>
  static py::object argument(S value) {
    return py::float_(double(value));
  }

  /// out = fn(arguments...) for a result of out's shape; NaN and a recorded failure otherwise.
  template <class S, class... Arguments>
  void call(const py::object& fn, const char* what, MatrixRef<S> out,
            const Arguments&... arguments) const {
    py::gil_scoped_acquire locked;
    if (failed()) {  // the library runs on to its own end; Python is not called again
      out.setConstant(std::numeric_limits<S>::quiet_NaN());
      return;
    }
    try {
      const py::object result = fn(argument<S>(arguments)...);
      const auto values = contiguous<S>(result, functions_->name, concat_result(what));
      if (values.ndim() != 2 || values.shape(0) != out.cols() || values.shape(1) != out.rows())
        throw shape_error(detail::concat(functions_->name, ": ", what, " must return shape (",
                                         out.cols(), ", ", out.rows(),
                                         "), the shape of its input; got ", shape_text(values)));
      out = Eigen::Map<const Matrix<S>>(values.data(), out.rows(), out.cols());
    } catch (...) {
      record(std::current_exception());
      out.setConstant(std::numeric_limits<S>::quiet_NaN());
    }
  }
  static std::string concat_result(const char* what) { return detail::concat(what, "'s result"); }

  template <class S>
  RowVector<S> summed(const py::object& fn, const char* what, const MatrixCRef<S>& in) const {
    Matrix<S> values(in.rows(), in.cols());
    call(fn, what, MatrixRef<S>(values), in);
    return values.colwise().sum();
  }

  /// a with t a + f(a) = target per entry, by bisection (f is monotone, t >= 0): one Python
  /// call of f per halving, on the whole batch.
  template <class S>
  void solve_monotone(S t, const MatrixCRef<S>& target, MatrixRef<S> a) const {
    Matrix<S> low = Matrix<S>::Constant(target.rows(), target.cols(), S(-1));
    Matrix<S> high = Matrix<S>::Constant(target.rows(), target.cols(), S(1));
    Matrix<S> value(target.rows(), target.cols());
    const auto h = [&](const Matrix<S>& at) {
      call(functions_->f, "f", MatrixRef<S>(value), MatrixCRef<S>(at));
      value += t * at;
    };
    for (int doubling = 0; doubling < 1100; ++doubling) {  // brackets up to the largest S
      h(low);
      const bool low_ok = !(value.array() > target.array()).any();
      h(high);
      const bool high_ok = !(value.array() < target.array()).any();
      if ((low_ok && high_ok) || !value.allFinite()) break;
      low *= S(2);
      high *= S(2);
    }
    for (int halving = 0; halving < std::numeric_limits<S>::digits + 64; ++halving) {
      a = low + (high - low) / S(2);
      h(Matrix<S>(a));
      low = (value.array() < target.array()).select(a, low);
      high = (value.array() < target.array()).select(high, a);
    }
    a = low + (high - low) / S(2);
  }

  bool failed() const {
    const std::lock_guard<std::mutex> guard(functions_->failure_lock);
    return functions_->failure != nullptr;
  }

  void record(std::exception_ptr error) const {
    const std::lock_guard<std::mutex> guard(functions_->failure_lock);
    if (!functions_->failure) functions_->failure = std::move(error);
  }

  std::shared_ptr<python_functions> functions_;
};

}  // namespace bilevel::python
