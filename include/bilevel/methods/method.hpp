#pragma once
/// \file
/// The method interface. A method is a generic algorithm over any program: given a batch
/// (x, y), it either returns a gradient estimate for any optimizer (GradientMethod), or takes a
/// training step of its own, such as a block-coordinate update of the weights (StepMethod);
/// methods that are both expose both. Methods keep their own work buffers, sized on first use
/// and reused for every later batch of the same size.
///
/// The view that unifies these methods: C. Zach, arXiv:2105.07231 (2021); their math in one
/// notation: docs/methods.md §4-§5.

#include <cmath>
#include <concepts>
#include <limits>
#include <span>
#include <string>
#include <string_view>

#include "../core/error.hpp"
#include "../core/finite.hpp"
#include "../core/types.hpp"

namespace bilevel {

/// What one step reports: the batch-mean loss at the forward pass, the number of correctly
/// classified samples (argmax of the output against argmax of y), and for iterative methods
/// how their inner solver ended (NaN / 0 where a method has no inner solver).
struct step_report {
  double loss = 0;
  Index correct = 0;
  double inner_residual = std::numeric_limits<double>::quiet_NaN();
  Index inner_iterations = 0;
  double inner_energy = std::numeric_limits<double>::quiet_NaN();
  /// Samples whose inner problem reached the solver's cap before it met its stopping rule
  /// (docs/methods.md §5.6b); 0 when every sample converged or there is no inner solver.
  Index unconverged = 0;
  /// LPOM: the share of per-sample fixed-point updates that would have raised the objective and
  /// were replaced by proximal-gradient steps (NaN for every other method).
  double safeguarded = std::numeric_limits<double>::quiet_NaN();
  /// AltMin: layers whose local weight gradient is exactly zero because none of their codes
  /// moved (their targets are the forward pass).
  Index idle_layers = 0;

  bool converged() const { return unconverged == 0; }
};

template <class M, class Program>
concept GradientMethod = requires(M& method, const Program& net,
                                  const Matrix<typename Program::scalar_type>& batch,
                                  Vector<typename Program::scalar_type>& gradient) {
  { method.name() } -> std::convertible_to<std::string>;
  { method.gradient(net, batch, batch, gradient) } -> std::same_as<step_report>;
};

/// A gradient method that keeps a state per training example (EP's persistent particles) and
/// so also takes the batch's sample indices: `gradient(net, x, y, samples, gradient)`, with
/// samples[j] the index in the training set of column j. The trainer passes them to every
/// method that accepts them.
template <class M, class Program>
concept SampleIndexedMethod =
    GradientMethod<M, Program> &&
    requires(M& method, const Program& net, const Matrix<typename Program::scalar_type>& batch,
             std::span<const Index> samples, Vector<typename Program::scalar_type>& gradient) {
      { method.gradient(net, batch, batch, samples, gradient) } -> std::same_as<step_report>;
    };

/// A method with a training step of its own (block-coordinate updates of the weights, its own
/// weight optimizer): it changes `net`'s parameters in place.
template <class M, class Program>
concept StepMethod = requires(M& method, Program& net,
                              const Matrix<typename Program::scalar_type>& batch) {
  { method.name() } -> std::convertible_to<std::string>;
  { method.train_step(net, batch, batch) } -> std::same_as<step_report>;
};

/// A method whose model predicts by something other than the forward pass (EP relaxes to a
/// fixed point): `predict(net, x, output)` writes the output layer's values for x.
template <class M, class Program>
concept PredictingMethod = requires(M& method, const Program& net,
                                    const Matrix<typename Program::scalar_type>& batch,
                                    Matrix<typename Program::scalar_type>& output) {
  method.predict(net, batch, output);
};

namespace detail {

/// The check at every method's entry point: x is n_0 x B with finite entries, y is n_L x B and
/// valid targets for the program's loss (program::check_targets), and B > 0. One pass over x
/// and y per batch: cheap next to the method's products.
template <class Program, class S>
void require_batch(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                   std::string_view function) {
  require_sample_columns(function, "x", net.input_size(), x.rows(), x.cols());
  require_shape(function, "y", net.output_size(), x.cols(), y.rows(), y.cols());
  require(x.cols() > 0, function, "the batch size", "> 0", x.cols());
  if (!all_finite(x))
    throw numeric_error(concat(function, ": x must be finite, got a NaN or Inf entry"));
  net.check_targets(y, function);
}

/// Throws config_error unless a per-layer list (betas, lambdas) holds 1 value or one per layer;
/// formats its message only on failure, so the check costs no allocation per step.
inline void require_per_layer(std::size_t count, Index depth, std::string_view function,
                              std::string_view what) {
  if (count != 1 && Index(count) != depth)
    require(false, function, what, parts("1 or one per layer (", depth, ")"), count);
}

/// The batch-mean loss of `output` against y, through `values` (the per-sample losses, a buffer
/// reused across batches, so that reporting the loss allocates nothing).
template <class Program, class S>
double mean_loss(const Program& net, const MatrixCRef<S>& output, const MatrixCRef<S>& y,
                 RowVector<S>& values) {
  net.loss_values(output, y, values);
  return double(values.mean());
}

}  // namespace detail

/// Samples whose largest output coincides with the largest target entry.
template <class S>
Index count_correct(const MatrixCRef<S>& output, const MatrixCRef<S>& y) {
  Index correct = 0;
  for (Index j = 0; j < output.cols(); ++j) {
    Index predicted = 0, expected = 0;
    output.col(j).maxCoeff(&predicted);
    y.col(j).maxCoeff(&expected);
    correct += predicted == expected;
  }
  return correct;
}

}  // namespace bilevel
