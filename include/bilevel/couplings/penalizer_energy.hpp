#pragma once
/// \file
/// The energy MAC and PCN minimise over the hidden states (docs/methods.md §3, §5.4): the
/// penalizer coupling of every hidden layer (penalizer.hpp) plus the weighted loss, held in
/// displacement form (§5.6b). Per sample, with z_0 = x,
/// ~~~{.unparsed}
///   F(z) = sum_{k<L} w/2 ||z_k - f_k(W_k z_{k-1} + b_k)||^2 + c l(f_L(W_L z_{L-1} + b_L), y),
/// ~~~
/// a penalty weight w and a loss weight c: MAC takes w = mu, c = 1; PCN w = 1, c = s. Only the
/// ratio matters for the minimiser, the spacing s = c / w: the minimiser moves the hidden states
/// by O(s) from the forward pass z^0. The output z_L = f_L(a_L) is not a free variable: the loss
/// is the program's own, on the output layer's activation, as in the forward pass.
///
/// The states are held as displacements d_k = z_k - z^0_k, and every error is formed as
/// ~~~{.unparsed}
///   eps_k = z_k - f(a_k) = d_k - (f(a^0_k + e_k) - f(a^0_k)),     e_k = W_k d_{k-1}  (e_1 = 0),
/// ~~~
/// with the difference of f taken without cancellation (difference(), activations/concept.hpp),
/// so eps keeps its digits relative to ||d|| = O(s), which in float falls below the rounding of
/// z itself at s around 1e-3.
/// Signals, one per layer:
/// ~~~{.unparsed}
///   sig_k = w J_f(a_k)^T (f(a_k) - z_k)  (k < L),     sig_L = c J_{f_L}(a_L)^T dl/dz_L,
/// ~~~
/// so that dF/dz_k = w eps_k + W_{k+1}^T sig_{k+1} (hidden k) and dF/dW_k = sig_k z_{k-1}^T,
/// dF/db_k = sig_k. Both methods estimate the gradient as (1/c) dF/dtheta at the minimiser, the
/// batch mean over samples: by the envelope theorem the gradient of
/// V(theta) = mean_j min_z F^j(z, theta) / c, which tends to BP's as s -> 0.
///
/// First-order start (§5.6b, penalizer coupling): the minimiser satisfies eps_k = -s g_k + O(s^2)
/// with g_k = dl/dz_k BP's error at the forward pass, so
/// ~~~{.unparsed}
///   z~_k = f(W_k z~_{k-1} + b_k) - s g_k,   i.e.  d~_k = (f(a^0_k + W_k d~_{k-1}) - f(a^0_k)) - s g_k,
/// ~~~
/// bottom-up, is within O(s^2) of it. It needs BP's backward pass (non-local).

#include <initializer_list>
#include <utility>
#include <vector>

#include "../activations/concept.hpp"
#include "../core/types.hpp"
#include "../layers/packed_maps.hpp"
#include "../methods/active_set.hpp"
#include "../program.hpp"

namespace bilevel::detail {

/// The energy above for one batch: the forward pass z^0, and evaluations at points d.
template <Scalar S>
class penalizer_energy {
 public:
  /// One point of the hidden states with what an evaluation gives there. Index k is layer k
  /// (1-based, as in the formulas); unused indices hold empty matrices.
  struct point {
    std::vector<Matrix<S>> d;         ///< d_k = z_k - z^0_k, hidden k = 1..L-1
    std::vector<Matrix<S>> signal;    ///< sig_k, k = 1..L
    std::vector<Matrix<S>> gradient;  ///< dF/dz_k, hidden k
    std::vector<Matrix<S>> direction;  ///< Gauss-Newton direction, hidden k (MAC only)
    RowVector<S> energy;              ///< F per sample
    RowVector<S> squared_gradient;    ///< ||dF/dz||^2 per sample, hidden layers stacked
    RowVector<S> slope;               ///< <dF/dz, direction> per sample (MAC only)

    /// Sample j of every member from `other` (same batch).
    void take_sample(const point& other, Index j) {
      for (std::size_t k = 0; k < d.size(); ++k) {
        if (d[k].size() > 0) d[k].col(j) = other.d[k].col(j);
        if (gradient[k].size() > 0) gradient[k].col(j) = other.gradient[k].col(j);
        if (direction[k].size() > 0) direction[k].col(j) = other.direction[k].col(j);
      }
      for (std::size_t k = 0; k < signal.size(); ++k)
        if (signal[k].size() > 0) signal[k].col(j) = other.signal[k].col(j);
      energy(j) = other.energy(j);
      squared_gradient(j) = other.squared_gradient(j);
      if (slope.size() > 0) slope(j) = other.slope(j);
    }

    /// Exchanges samples p and q in every member.
    void swap_samples(Index p, Index q) {
      for (std::vector<Matrix<S>>* members : {&d, &signal, &gradient, &direction})
        for (Matrix<S>& m : *members)
          if (m.size() > 0) m.col(p).swap(m.col(q));
      for (RowVector<S>* row : {&energy, &squared_gradient, &slope})
        if (row->size() > 0) std::swap((*row)(p), (*row)(q));
    }
  };

  /// A new batch: the forward pass of x, F's weights w (penalty) and c (loss), and the norms
  /// ||z^0_k|| per sample (for base_norm). Sizes the work buffers (no allocation for a
  /// batch of the same size).
  template <class Program>
  void start(const Program& net, const MatrixCRef<S>& x, S penalty, S loss_weight) {
    penalty_ = penalty;
    loss_weight_ = loss_weight;
    net.forward(x, forward_);
    const auto L = std::size_t(net.depth());
    const Index B = x.cols();
    a_.resize(L + 1);
    shift_.resize(L + 1);
    difference_.resize(L + 1);
    error_.resize(L + 1);
    base_norm_.resize(L + 1);
    z_.resize(L + 1);
    back_.resize(L);
    z_[0] = x;
    for (std::size_t k = 1; k <= L; ++k) {
      const Index n = net.layer(Index(k - 1)).outputs();
      for (Matrix<S>* m : {&a_[k], &shift_[k], &difference_[k], &error_[k], &z_[k]})
        m->resize(n, B);
      if (k == 1) difference_[k].setZero();
      if (k < L) back_[k].resize(n, B);
      base_norm_[k] = forward_.z[k].colwise().norm();
    }
    losses_.resize(B);
    width_ = B;
  }

  /// Evaluations and directions run on the first `width` samples only: those an active-set
  /// solver still iterates on (all of them after start()). Its retired samples keep what their
  /// last evaluation gave.
  void set_width(Index width) { width_ = width; }
  Index width() const { return width_; }

  /// Exchanges samples p and q in the forward pass, the base norms, the last evaluation's
  /// output and the given points (an active-set solver's reordering).
  void swap_samples(Index p, Index q, std::initializer_list<point*> points) {
    for (std::size_t k = 1; k < z_.size(); ++k) {
      forward_.a[k - 1].col(p).swap(forward_.a[k - 1].col(q));
      forward_.z[k].col(p).swap(forward_.z[k].col(q));
      std::swap(base_norm_[k](p), base_norm_[k](q));
    }
    z_.back().col(p).swap(z_.back().col(q));
    for (point* at : points) at->swap_samples(p, q);
  }

  /// Sizes a point for the current batch (no allocation when it already fits).
  /// With `with_direction`, also the Gauss-Newton direction's buffers.
  template <class Program>
  void size(const Program& net, point& p, bool with_direction = false) const {
    const auto L = std::size_t(net.depth());
    const Index B = forward_.z[0].cols();
    p.d.resize(L);
    p.gradient.resize(L);
    p.direction.resize(L);
    p.signal.resize(L + 1);
    for (std::size_t k = 1; k <= L; ++k) {
      const Index n = net.layer(Index(k - 1)).outputs();
      if (k < L) {
        p.d[k].resize(n, B);
        p.gradient[k].resize(n, B);
        if (with_direction) p.direction[k].resize(n, B);
      }
      p.signal[k].resize(n, B);
    }
    p.energy.resize(B);
    p.squared_gradient.resize(B);
    if (with_direction) p.slope.resize(B);
  }

  /// d = 0: the forward pass.
  void cold_start(point& p) const {
    for (Matrix<S>& d : p.d) d.setZero();
  }

  /// d = the first-order start d~ of the header comment (spacing s = c / w).
  template <class Program>
  void first_order_start(const Program& net, const MatrixCRef<S>& y, point& p) {
    const Index L = net.depth();
    const S spacing = loss_weight_ / penalty_;
    // BP's errors g_k = dl/dz_k at the forward pass, top-down, kept in p.gradient.
    Matrix<S>& top = error_[std::size_t(L)];
    net.loss_gradient(forward_.z.back(), y, top);
    for (Index k = L; k >= 2; --k) {
      const auto u = std::size_t(k);
      net.layer(k - 1).visit([&](const auto& pair) {
        vjp<S>(pair, forward_.a[u - 1], k == L ? top : p.gradient[u], shift_[u]);
      });
      net.transpose(k - 1, shift_[u], p.gradient[u - 1]);
    }
    // d~ bottom-up.
    for (Index k = 1; k < L; ++k) {
      const auto u = std::size_t(k);
      if (k == 1) {
        p.d[u] = -spacing * p.gradient[u];
      } else {
        net.linear(k - 1, p.d[u - 1], shift_[u]);
        net.layer(k - 1).visit([&](const auto& pair) {
          difference<S>(pair, forward_.a[u - 1], shift_[u], difference_[u]);
        });
        p.d[u] = difference_[u] - spacing * p.gradient[u];
      }
    }
  }

  /// The program's maps packed for the evaluations that follow (layers/packed_maps.hpp), until
  /// the returned guard goes out of scope: the parameters must not change meanwhile.
  template <class Program>
  [[nodiscard]] auto frozen(const Program& net) {
    return maps_.frozen(net, forward_.z.front().cols());
  }

  /// F per sample at p.d, and with `with_gradient` the signals, dF/dz and its squared norm (for
  /// the first width() samples; y holds their labels).
  template <class Program>
  void evaluate(const Program& net, const MatrixCRef<S>& y, point& p, bool with_gradient) {
    const Index L = net.depth();
    live(p.energy).setZero();
    for (Index k = 1; k <= L; ++k) {
      const auto u = std::size_t(k);
      const auto a0 = live(forward_.a[u - 1]);
      net.layer(k - 1).visit([&](const auto& pair) {
        // a_k = a^0_k + e_k and f(a_k) - f(a^0_k); z_0 = x does not move, so e_1 = 0 (and the
        // difference stays 0 from start()).
        if (k > 1) {
          maps_.linear(net, k - 1, live(p.d[u - 1]), live(shift_[u]));
          live(a_[u]) = a0 + live(shift_[u]);
          difference<S>(pair, a0, live(shift_[u]), live(difference_[u]));
        }
        const MatrixCRef<S> a = k == 1 ? MatrixCRef<S>(a0) : MatrixCRef<S>(live(a_[u]));
        auto e = live(error_[u]);
        if (k < L) {
          e = live(p.d[u]) - live(difference_[u]);  // eps_k
          live(p.energy) += (penalty_ / S(2)) * e.colwise().squaredNorm();
          if (with_gradient) {
            live(shift_[u]) = -penalty_ * e;
            vjp<S>(pair, a, live(shift_[u]), live(p.signal[u]));
          }
        } else {
          live(z_[u]) = live(forward_.z[u]) + live(difference_[u]);
          net.loss_values(live(z_[u]), y, live(losses_));
          live(p.energy) += loss_weight_ * live(losses_);
          if (with_gradient) {
            net.loss_gradient(live(z_[u]), y, e);
            e *= loss_weight_;
            vjp<S>(pair, a, e, live(p.signal[u]));
          }
        }
      });
    }
    if (!with_gradient) return;
    live(p.squared_gradient).setZero();
    for (Index k = 1; k < L; ++k) {
      const auto u = std::size_t(k);
      maps_.transpose(net, k, live(p.signal[u + 1]), live(p.gradient[u]), S(1));
      live(p.gradient[u]) += penalty_ * live(error_[u]);
      live(p.squared_gradient) += live(p.gradient[u]).colwise().squaredNorm();
    }
  }

  /// The Gauss-Newton direction -P^{-1} dF/dz at p, into p.direction, and its slope
  /// <dF/dz, direction> per sample. P = w (I - N)^T (I - N) is the Hessian of the penalties on
  /// the current linear pieces of f: eps = (I - N) dz to first order, with N's only nonzero
  /// blocks N_{k,k-1} = J_f(a_k) W_k (z_0 = x is fixed). I - N is unit block lower-triangular,
  /// so P^{-1} g takes one substitution down and one up:
  /// ~~~{.unparsed}
  ///   u_{L-1} = g_{L-1},  u_k = g_k + W_{k+1}^T J_f(a_{k+1}) u_{k+1}    (u = (I - N)^{-T} g)
  ///   v_1 = u_1,          v_k = u_k + J_f(a_k) W_k v_{k-1}              (v = (I - N)^{-1} u)
  /// ~~~
  /// and the direction is -v / w. J_f is symmetric (f = grad G), so vjp applies it. The loss's
  /// curvature is left out of P: the step is Newton's up to O(s), s = c / w. Reads the a_k of
  /// the last evaluation, which must have been at p.
  template <class Program>
  void gauss_newton_direction(const Program& net, point& p) {
    const Index L = net.depth();
    if (L == 1) return;
    const auto top = std::size_t(L - 1);
    live(back_[top]) = live(p.gradient[top]);
    for (Index k = L - 2; k >= 1; --k) {
      const auto u = std::size_t(k);
      net.layer(k).visit([&](const auto& pair) {
        vjp<S>(pair, live(a_[u + 1]), live(back_[u + 1]), live(shift_[u + 1]));
      });
      live(back_[u]) = live(p.gradient[u]);
      maps_.transpose(net, k, live(shift_[u + 1]), live(back_[u]), S(1), output_mode::add);
    }
    live(p.direction[1]) = live(back_[1]);
    for (Index k = 2; k < L; ++k) {
      const auto u = std::size_t(k);
      maps_.linear(net, k - 1, live(p.direction[u - 1]), live(shift_[u]));
      net.layer(k - 1).visit([&](const auto& pair) {
        vjp<S>(pair, live(a_[u]), live(shift_[u]), live(difference_[u]));
      });
      live(p.direction[u]) = live(back_[u]) + live(difference_[u]);
    }
    live(p.slope).setZero();
    for (Index k = 1; k < L; ++k) {
      const auto u = std::size_t(k);
      live(p.direction[u]) *= -S(1) / penalty_;
      live(p.slope) += live(p.direction[u]).cwiseProduct(live(p.gradient[u])).colwise().sum();
    }
  }

  /// The states z_0 = x, z_k = z^0_k + d_k (hidden) and z_L = f_L(a_L) of p (z_L as of the
  /// last evaluation, which must have been at p).
  const std::vector<Matrix<S>>& states(const point& p) {
    for (std::size_t k = 1; k < p.d.size(); ++k) z_[k] = forward_.z[k] + p.d[k];
    return z_;
  }

  /// Layer index i's (0-based) part of the estimate (1/c) dF/dtheta, batch mean, from p's
  /// signals and the states `z` (from states()).
  template <class Program>
  void layer_estimate(const Program& net, const point& p, const std::vector<Matrix<S>>& z,
                      Index i, Vector<S>& gradient) const {
    const auto u = std::size_t(i);
    const S scale = S(1) / (loss_weight_ * S(z[0].cols()));
    net.layer(i).parameter_gradient(z[u], p.signal[u + 1], scale, gradient);
  }

  const forward_state<S>& forward() const { return forward_; }
  /// The spacing s = c / w and the norms ||z^0_k|| per sample: what, besides the displacement
  /// norms ||d_k||, sets the scale layer k's iterates round at (displacement_rounding_scale,
  /// methods/stopping_rule.hpp). The signal is s times quantities of the size of z (the loss
  /// gradient p - y of a well-fitted sample cancels to rounding relative to its terms, not to
  /// itself).
  S spacing() const { return loss_weight_ / penalty_; }
  const RowVector<S>& base_norm(Index k) const { return base_norm_[std::size_t(k)]; }

 private:
  /// The leading width_ samples of a per-sample buffer.
  template <class Buffer> auto live(Buffer& buffer) const { return active_columns(buffer, width_); }

  S penalty_ = S(1), loss_weight_ = S(1);
  Index width_ = 0;
  forward_state<S> forward_;
  packed_maps<S> maps_;  ///< the weights' maps, packed while frozen
  std::vector<Matrix<S>> a_, shift_, difference_, error_, back_, z_;
  std::vector<RowVector<S>> base_norm_;
  RowVector<S> losses_;
};

}  // namespace bilevel::detail
