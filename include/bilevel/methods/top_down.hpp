#pragma once
/// \file
/// The top-down, linearised unravelling shared by BP and Fenchel BP (docs/methods.md §5.1, §5.2):
/// an error g_L = dl/dz_L enters the top layer; each layer turns the error g_k arriving at z_k
/// into a pre-activation signal delta_k (the method's choice), contributes the batch means
/// dW_k = delta_k z_{k-1}^T / B and db_k = sum_cols(delta_k) / B, and passes
/// g_{k-1} = W_k^T delta_k down.
///
/// Paper: C. Zach, arXiv:2105.07231 (2021): BP and Fenchel BP as top-down, linearised unravellings.

#include <vector>

#include "../core/error.hpp"
#include "../program.hpp"
#include "method.hpp"

namespace bilevel::detail {

template <Scalar S>
struct top_down_buffers {
  forward_state<S> state;
  std::vector<Matrix<S>> error;  ///< error[k]: g arriving at z_{k+1}
  std::vector<Matrix<S>> delta;  ///< delta[k]: signal at a_{k+1}
  RowVector<S> loss;             ///< per-sample loss of the batch
};

/// Runs forward, loss and the top-down sweep; `signal(k, pair, a, z, g, delta)` computes layer
/// k's (0-based) delta from its error g. Writes the batch-mean gradient into `gradient`.
template <class Program, class Signal>
step_report top_down_gradient(const Program& net, const MatrixCRef<typename Program::scalar_type>& x,
                              const MatrixCRef<typename Program::scalar_type>& y,
                              Vector<typename Program::scalar_type>& gradient,
                              top_down_buffers<typename Program::scalar_type>& buffers,
                              Signal&& signal, const char* function) {
  using S = typename Program::scalar_type;
  require_batch<Program, S>(net, x, y, function);
  if (gradient.size() != net.parameter_count()) gradient.resize(net.parameter_count());

  const Index L = net.depth(), B = x.cols();
  net.forward(x, buffers.state);
  const auto& a = buffers.state.a;
  const auto& z = buffers.state.z;
  buffers.error.resize(std::size_t(L));
  buffers.delta.resize(std::size_t(L));

  step_report report;
  report.loss = mean_loss<Program, S>(net, z.back(), y, buffers.loss);
  report.correct = count_correct<S>(z.back(), y);

  Matrix<S>& top_error = buffers.error.back();
  top_error.resize(net.output_size(), B);
  net.loss_gradient(z.back(), y, top_error);

  const S inverse_batch = S(1) / S(B);
  for (Index k = L - 1; k >= 0; --k) {
    const auto index = std::size_t(k);
    Matrix<S>& delta = buffers.delta[index];
    delta.resize(a[index].rows(), B);
    net.layer(k).visit([&](const auto& pair) {
      signal(k, pair, a[index], z[index + 1], buffers.error[index], delta);
    });
    net.layer(k).parameter_gradient(z[index], delta, inverse_batch, gradient);
    if (k > 0) net.transpose(k, delta, buffers.error[index - 1]);
  }
  return report;
}

}  // namespace bilevel::detail
