#pragma once
/// \file
/// Back-propagation (docs/methods.md §5.1): penalizer coupling, top-down, linearised: the chain rule
/// delta_L = J_f(a_L)^T dl/dz_L, delta_k = J_f(a_k)^T W_{k+1}^T delta_{k+1}, with the derivative
/// taken as 0 at kinks (ReLU'(0) = 0).
///
/// Batch means (docs/methods.md §1): dW_k = delta_k z_{k-1}^T / B, db_k = sum_cols(delta_k) / B.
///
/// Paper: D. Rumelhart, G. Hinton, R. Williams, "Learning representations by back-propagating
/// errors", Nature 323, 1986.

#include <string>

#include "top_down.hpp"

namespace bilevel {

/// Back-propagation (docs/methods.md §5.1); a GradientMethod.
template <Scalar S>
class bp {
 public:
  std::string name() const { return "bp"; }

  /// Batch-mean gradient of the batch-mean loss; `gradient` gets the program's parameter layout.
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    return detail::top_down_gradient(
        net, x, y, gradient, buffers_,
        [](Index, const auto& pair, const Matrix<S>& a, const Matrix<S>&, const Matrix<S>& g,
           Matrix<S>& delta) { vjp<S>(pair, a, g, delta); },
        "bp::gradient");
  }

  /// The forward pass of the last batch.
  const forward_state<S>& state() const { return buffers_.state; }

  /// Nothing persists across steps: the state is the name, so another method's is refused.
  void save_state(state_writer& out) const { out.write_text(name()); }
  void load_state(state_reader& in) { in.expect_text(name(), "method"); }

 private:
  detail::top_down_buffers<S> buffers_;
};

}  // namespace bilevel
