#pragma once
/// \file
/// A program on one sample as an inner problem of bilevel_surrogate.hpp, so that the generic
/// contrastive and implicit gradients can be taken of a network (docs/methods.md §3, §4):
///
/// ~~~{.unparsed}
///   E(z, theta) = sum_{k=1..L} E_k(z_k, W_k z_{k-1} + b_k),   z_0 = x,   l(z) = loss(z_L, y),
/// ~~~
///
/// with z = (z_1, ..., z_L) stacked into one vector and theta the program's flat parameters
/// (program.hpp's layout), E_k the per-layer energy of a coupling (couplings/). Under the
/// penalizer and the Fenchel coupling every E_k >= 0 vanishes at z_k = f_k(a_k), so the forward
/// pass is the free minimiser: implicit_gradient then gives BP's gradient, and
/// contrastive_gradient tends to it as beta -> 0 (Zach 2021, §4). One sample, one vector: this is
/// the reference the batched methods are checked against, not their fast path.
///
/// ~~~{.unparsed}
///   program_problem problem(net, x);   // x: n_0 x 1
///   program_loss loss(net, y);         // y: n_L x 1
///   surrogate_settings<double> settings;
///   settings.z_start = problem.forward_states(net.parameters());
///   auto result = implicit_gradient(problem, loss, net.parameters(), settings);
/// ~~~

#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "../couplings/penalizer.hpp"
#include "../program.hpp"

namespace bilevel {

/// E(z, theta) of a program on the sample `x` under `Coupling` (see the file comment); an
/// InnerProblem with z_size() and theta_size().
template <class Program, class Coupling = penalizer_coupling>
class program_problem {
 public:
  using S = typename Program::scalar_type;

  program_problem(const Program& net, const MatrixCRef<S>& x) : net_(net), x_(x) {
    detail::require_shape("program_problem", "x", net.input_size(), 1, x.rows(), x.cols());
    for (Index k = 0; k < net.depth(); ++k) {
      offsets_.push_back(z_size_);
      z_size_ += net.layer(k).outputs();
    }
  }

  Index z_size() const { return z_size_; }
  Index theta_size() const { return net_.parameter_count(); }

  /// The forward pass's states z_1..z_L stacked: the free minimiser (file comment).
  Vector<S> forward_states(const Vector<S>& theta) const {
    set_parameters(theta, "program_problem::forward_states");
    Vector<S> z(z_size_);
    Matrix<S> a, state = x_;
    for (Index k = 0; k < net_.depth(); ++k) {
      net_.affine(k, state, a);
      state.resize(a.rows(), 1);  // activate writes into a matrix of a's size
      net_.layer(k).visit([&](const auto& pair) { activate<S>(pair, a, state); });
      z.segment(offsets_[std::size_t(k)], state.rows()) = state;
    }
    return z;
  }

  S energy(const Vector<S>& z, const Vector<S>& theta) const {
    prepare(z, theta, "program_problem::energy");
    S total = 0;
    for (Index k = 0; k < net_.depth(); ++k)
      net_.layer(k).visit([&](const auto& pair) {
        total += Coupling::template value<S>(pair, state(z, k), a_[std::size_t(k)])(0);
      });
    return total;
  }

  /// dE/dz_k = dE_k/dz_k + W_{k+1}^T dE_{k+1}/da_{k+1} (the top layer has no second term).
  void gradient_z(const Vector<S>& z, const Vector<S>& theta, Vector<S>& out) const {
    prepare(z, theta, "program_problem::gradient_z");
    out.setZero(z_size_);
    for (Index k = 0; k < net_.depth(); ++k) {
      const auto i = std::size_t(k);
      net_.layer(k).visit([&](const auto& pair) {
        own_.resize(a_[i].rows(), 1);
        Coupling::template gradient_z<S>(pair, state(z, k), a_[i], own_);
        out.segment(offsets_[i], own_.rows()) += own_;
        if (k > 0) {
          Coupling::template gradient_a<S>(pair, state(z, k), a_[i], own_);
          net_.transpose(k, own_, out.segment(offsets_[i - 1], net_.layer(k).inputs()), S(1),
                         output_mode::add);
        }
      });
    }
  }

  /// dE/dW_k = dE_k/da_k z_{k-1}^T and dE/db_k = dE_k/da_k, in the program's layout.
  void gradient_theta(const Vector<S>& z, const Vector<S>& theta, Vector<S>& out) const {
    prepare(z, theta, "program_problem::gradient_theta");
    out.setZero(theta_size());
    for (Index k = 0; k < net_.depth(); ++k) {
      const auto i = std::size_t(k);
      net_.layer(k).visit([&](const auto& pair) {
        own_.resize(a_[i].rows(), 1);
        Coupling::template gradient_a<S>(pair, state(z, k), a_[i], own_);
      });
      net_.layer(k).parameter_gradient(k == 0 ? MatrixCRef<S>(x_) : MatrixCRef<S>(state(z, k - 1)),
                                       own_, S(1), out);
    }
  }

 private:
  /// z_{k+1} (layer k's output, k 0-based) of a stacked z.
  auto state(const Vector<S>& z, Index k) const {
    return z.segment(offsets_[std::size_t(k)], net_.layer(k).outputs());
  }

  void set_parameters(const Vector<S>& theta, std::string_view function) const {
    detail::require_shape(function, "theta", theta_size(), 1, theta.size(), 1);
    net_.parameters() = theta;
  }

  /// Sets theta and a_k = W_k z_{k-1} + b_k for every layer.
  void prepare(const Vector<S>& z, const Vector<S>& theta, std::string_view function) const {
    detail::require_shape(function, "z", z_size_, 1, z.size(), 1);
    set_parameters(theta, function);
    a_.resize(std::size_t(net_.depth()));
    for (Index k = 0; k < net_.depth(); ++k) {
      if (k == 0)
        net_.affine(k, x_, a_[0]);
      else
        net_.affine(k, Matrix<S>(state(z, k - 1)), a_[std::size_t(k)]);
    }
  }

  mutable Program net_;  ///< a copy whose parameters are set to each call's theta
  Matrix<S> x_;
  std::vector<Index> offsets_;
  Index z_size_ = 0;
  mutable std::vector<Matrix<S>> a_;
  mutable Matrix<S> own_;
};

/// l(z) = the program's loss of z_L (the last block of a stacked z) against the target `y`; a
/// BilevelLoss for program_problem.
template <class Program>
class program_loss {
 public:
  using S = typename Program::scalar_type;

  program_loss(const Program& net, const MatrixCRef<S>& y) : net_(net), y_(y) {
    detail::require_shape("program_loss", "y", net.output_size(), 1, y.rows(), y.cols());
    net.check_targets(y, "program_loss");
  }

  S value(const Vector<S>& z) const { return net_.loss_values(output(z), y_)(0); }

  void gradient(const Vector<S>& z, Vector<S>& out) const {
    out.setZero(z.size());
    Matrix<S> g(net_.output_size(), 1);
    net_.loss_gradient(output(z), y_, g);
    out.tail(net_.output_size()) = g;
  }

 private:
  Matrix<S> output(const Vector<S>& z) const {
    detail::require(z.size() >= net_.output_size(), "program_loss", "the size of z",
                    detail::parts(">= the output size ", net_.output_size()), z.size());
    return z.tail(net_.output_size());
  }

  Program net_;
  Matrix<S> y_;
};

}  // namespace bilevel
