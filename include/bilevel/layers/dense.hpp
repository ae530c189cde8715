#pragma once
/// \file
/// The dense map a = W x + b with W of outputs x inputs (docs/methods.md §1), in the operations
/// every map provides (layers/map.hpp). Each is one matrix product over the batch.

#include "../core/parallel.hpp"
#include "../core/types.hpp"
#include "map.hpp"

namespace bilevel {

template <Scalar S>
class dense {
 public:
  dense(Index inputs, Index outputs) : inputs_(inputs), outputs_(outputs) {}

  Index inputs() const { return inputs_; }
  Index outputs() const { return outputs_; }
  Index weight_rows() const { return outputs_; }
  Index weight_cols() const { return inputs_; }
  Index bias_size() const { return outputs_; }
  Index fan_in() const { return inputs_; }
  Index fan_out() const { return outputs_; }

  /// ||W||_F^2 >= ||W||_2^2.
  template <class Weights>
  auto squared_norm_bound(const Weights& weights) const {
    return weights.squaredNorm();
  }

  /// out = W x + b; the bias is added in blocks of columns in parallel (core/parallel.hpp).
  void apply(const MatrixCRef<S>& weights, const Eigen::Ref<const Vector<S>>& bias,
             const MatrixCRef<S>& x, MatrixRef<S> out) const {
    out.noalias() = weights * x;
    detail::parallel_columns(out.rows(), out.cols(), [&](Index first, Index count) {
      out.middleCols(first, count).colwise() += bias;
    });
  }

  void apply_linear(const MatrixCRef<S>& weights, const MatrixCRef<S>& x,
                    MatrixRef<S> out) const {
    out.noalias() = weights * x;
  }

  void apply_transpose(const MatrixCRef<S>& weights, const MatrixCRef<S>& g, MatrixRef<S> out,
                       S scale = S(1), output_mode mode = output_mode::assign) const {
    if (mode == output_mode::assign)
      out.noalias() = scale * weights.transpose() * g;
    else
      out.noalias() += scale * weights.transpose() * g;
  }

  /// dW = scale g x^T, db = scale g 1.
  void parameter_gradient(const MatrixCRef<S>& x, const MatrixCRef<S>& g, S scale,
                          MatrixRef<S> weight_gradient,
                          Eigen::Ref<Vector<S>> bias_gradient) const {
    weight_gradient.noalias() = scale * g * x.transpose();
    bias_gradient = scale * g.rowwise().sum();
  }

  void add_weight_gradient(const MatrixCRef<S>& x, const MatrixCRef<S>& g, S scale,
                           MatrixRef<S> weight_gradient) const {
    weight_gradient.noalias() += scale * g * x.transpose();
  }

 private:
  Index inputs_, outputs_;
};

}  // namespace bilevel
