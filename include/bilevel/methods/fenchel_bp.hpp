#pragma once
/// \file
/// Fenchel back-propagation (docs/methods.md §5.2; Zach 2021): the Fenchel coupling unravelled
/// top-down with the linearised surrogate at every level. With g_k the error arriving at z_k:
/// ~~~{.unparsed}
///   z_k^beta = f(a_k - beta_k g_k),  delta_k = (z_k - z_k^beta) / beta_k,  g_{k-1} = W_k^T delta_k,
/// ~~~
/// and dW_k = delta_k z_{k-1}^T / B with the forward z_{k-1}, not the perturbed one (Remark 2).
/// Same cost as BP; tends to BP as beta_k -> 0 (Corollary 2) and gives one-sided derivatives at
/// kinks (ReLU at a = 0: delta = min(g, 0)), which is what lets it leave the all-negative start.
/// An identity output layer (softmax folded into the loss) passes delta_L = dl/da_L unchanged.
///
/// Precision: delta_k is computed from the pair's exact difference f(a + h) - f(a)
/// (activations/concept.hpp), so every built-in pair keeps its digits at any beta. A user pair
/// without one leaves the direct form z - f(a - beta g), whose relative error is about u / beta
/// (u the unit roundoff of S): for such a pair gradient() refuses beta < sqrt(machine epsilon
/// of S) (3.5e-4 in float, 1.5e-8 in double), where half the digits or more would be lost.
///
/// Paper: C. Zach, "Bilevel Programs Meet Deep Learning: A Unifying View on Inference Learning
/// Methods", arXiv:2105.07231 (2021).

#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../couplings/fenchel.hpp"
#include "top_down.hpp"

namespace bilevel {

/// Fenchel back-propagation, one spacing beta or one per layer (docs/methods.md §5.2); a GradientMethod.
template <Scalar S>
class fenchel_bp {
 public:
  /// One spacing for every layer, or one per layer (k = 1..L), each > 0. Betas are per sample
  /// (docs/methods.md §1): the Fenchel BP paper's code uses B times these values.
  explicit fenchel_bp(std::vector<S> betas) : betas_(std::move(betas)) {
    detail::require(!betas_.empty(), "fenchel_bp", "the list of betas", "non-empty", "empty");
    for (const S beta : betas_) detail::require_positive_finite("fenchel_bp", "beta", beta);
  }
  explicit fenchel_bp(S beta) : fenchel_bp(std::vector<S>{beta}) {}

  std::string name() const { return "fenbp"; }
  const std::vector<S>& betas() const { return betas_; }

  /// beta of layer index k (0-based).
  S beta(Index k) const { return betas_.size() == 1 ? betas_.front() : betas_[std::size_t(k)]; }

  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
                       Vector<S>& gradient) {
    detail::require_per_layer(betas_.size(), net.depth(), "fenchel_bp::gradient",
                              "the number of betas");
    require_resolvable_betas(net);
    return detail::top_down_gradient(
        net, x, y, gradient, buffers_,
        [this](Index k, const auto& pair, const Matrix<S>& a, const Matrix<S>& z,
               const Matrix<S>& g, Matrix<S>& delta) {
          fenchel_signal<S>(pair, a, z, g, beta(k), delta);
        },
        "fenchel_bp::gradient");
  }

  const forward_state<S>& state() const { return buffers_.state; }

  /// Nothing persists across steps: the state is the name, so another method's is refused.
  void save_state(state_writer& out) const { out.write_text(name()); }
  void load_state(state_reader& in) { in.expect_text(name(), "method"); }

 private:
  /// Refuses a beta below sqrt(machine epsilon) on a layer whose pair has no exact difference.
  template <class Program>
  void require_resolvable_betas(const Program& net) const {
    const S smallest = std::sqrt(std::numeric_limits<S>::epsilon());
    for (Index k = 0; k < net.depth(); ++k) {
      net.layer(k).visit([&](const auto& pair) {
        if constexpr (!detail::has_exact_difference<std::decay_t<decltype(pair)>, S>) {
          if (beta(k) >= smallest) return;  // the message below is built only when it is thrown
          detail::require(
              false, "fenchel_bp::gradient",
              detail::parts("beta of layer ", k + 1, " (pair \"", pair.name(), "\")"),
              detail::parts(">= ", smallest,
                             " = sqrt(machine epsilon), since the pair has no f_difference and "
                             "(f(a) - f(a - beta g)) / beta then loses about epsilon / beta of "
                             "its relative accuracy"),
              beta(k));
        }
      });
    }
  }

  std::vector<S> betas_;
  detail::top_down_buffers<S> buffers_;
};

}  // namespace bilevel
