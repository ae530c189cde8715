#pragma once
/// \file
/// The Fenchel-coupled lifted objective shared by CHL, LPOM and FLN (METHODS.md §5.3, §5.5):
/// per sample,
/// ~~~{.unparsed}
///   J(z) = w l(z_L, y) + sum_k lambda_k [G*_k(z_k) + G_k(a_k) - <z_k, a_k>],  a_k = W_k z_{k-1} + b_k,
/// ~~~
/// over the activations z_1..z_L (z_0 = x) for fixed parameters. J is convex in each block z_k
/// (block-convex), so block coordinate descent over the blocks never increases it.
///
/// Block m's objective splits into a smooth part h_m and lambda_m G*_m(z_m) (layer m's pair):
/// ~~~{.unparsed}
///   m < L:  h_m(z_m) = lambda_{m+1} [G_{m+1}(W_{m+1} z_m + b_{m+1}) - <z_{m+1}, W_{m+1} z_m + b_{m+1}>]
///                      - lambda_m <z_m, a_m>
///   m = L:  h_L(z_L) = w l(z_L, y) - lambda_L <z_L, a_L>
/// ~~~
/// (1-based layers here; the code stores layer k at index k - 1 and z_k at index k). Each block is
/// solved by proximal gradient steps with backtracking, z <- prox_{t lambda_m G*}(z - t grad h_m),
/// which never increase the block objective; LPOM's fixed-point update is offered as well.
///
/// Papers: LPOM (Li, Fang & Lin, AAAI 2019, arXiv:1811.01501); FLN (Gu, Askari & El Ghaoui,
/// AISTATS 2020, arXiv:1811.08039); CHL's clamped energy as in Zach 2021 (arXiv:2105.07231).

#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "../activations/concept.hpp"
#include "../core/error.hpp"
#include "../core/state_stream.hpp"
#include "../couplings/fenchel.hpp"
#include "../program.hpp"
#include "batch_reduction.hpp"

namespace bilevel::detail {

/// The weights of J: lambda_k for k = 1..L (index k - 1) and w on the loss.
template <Scalar S>
struct lifted_weights {
  std::vector<S> lambda;
  S loss_weight = 1;
};

/// How a block solve ended.
struct block_result {
  Index iterations = 0;
  double residual = 0;  ///< RMS over samples of the gradient mapping (z - z+) / t
};

template <Scalar S>
class lifted_objective {
 public:
  /// z = the forward pass of x: the minimiser of J when w = 0, every coupling being 0 there.
  template <class Program>
  void start_from_forward(const Program& net, const MatrixCRef<S>& x) {
    net.forward(x, forward_);
    z_ = forward_.z;
    a_ = forward_.a;
  }

  std::vector<Matrix<S>>& z() { return z_; }
  const std::vector<Matrix<S>>& z() const { return z_; }
  /// a_k = W_k z_{k-1} + b_k for the current z (index k - 1).
  const std::vector<Matrix<S>>& a() const { return a_; }
  /// The forward pass J started from.
  const forward_state<S>& forward() const { return forward_; }

  /// Per-sample J(z).
  template <class Program>
  RowVector<S> value(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights) {
    const std::size_t L = z_.size() - 1;
    RowVector<S> total = weights.loss_weight * net.loss_values(z_[L], y);
    for (std::size_t k = 0; k < L; ++k) {
      net.layer(Index(k)).visit([&](const auto& pair) {
        total += weights.lambda[k] * fenchel_coupling::value<S>(pair, z_[k + 1], a_[k]);
      });
    }
    return total;
  }

  /// Proximal-gradient steps on block m (1..L) until the gradient mapping's RMS is below
  /// `tolerance` or `iterations` steps are taken. Never increases J.
  template <class Program>
  block_result solve_block(const Program& net, const MatrixCRef<S>& y,
                           const lifted_weights<S>& weights, Index m, Index iterations,
                           S tolerance) {
    block_result result;
    const auto layer = std::size_t(m - 1);
    const S lambda = weights.lambda[layer];
    S& step = step_size(m, weights);
    Matrix<S>& zm = z_[std::size_t(m)];
    candidate_.resize(zm.rows(), zm.cols());
    net.layer(m - 1).visit([&](const auto& pair) {
      smooth_gradient(net, y, weights, m, zm, gradient_);
      for (; result.iterations < iterations; ++result.iterations) {
        // Backtrack until the step is below 1/L along the move: for convex h,
        // <grad h(z+) - grad h(z), d> <= |d|^2 / t implies the quadratic upper model
        // h(z+) <= h(z) + <grad h(z), d> + |d|^2 / (2t), hence no increase of the block
        // objective; unlike comparing values of h it stays exact near the minimiser.
        bool accepted = false;
        for (int halving = 0; halving < 60 && !accepted; ++halving) {
          trial_ = zm - step * gradient_;
          prox_conj<S>(pair, trial_, step * lambda, candidate_);
          difference_ = candidate_ - zm;
          smooth_gradient(net, y, weights, m, candidate_, candidate_gradient_);
          const S curvature = (candidate_gradient_ - gradient_).cwiseProduct(difference_).sum();
          accepted = curvature <= difference_.squaredNorm() / step;
          if (!accepted) step /= 2;
        }
        if (!accepted) break;  // rounding dominates the move: at a minimiser
        zm.swap(candidate_);
        gradient_.swap(candidate_gradient_);
        result.residual = double(difference_.norm() / step) / std::sqrt(double(zm.cols()));
        step *= S(1.5);  // let the step grow back where the curvature allows
        if (result.residual <= double(tolerance)) {
          ++result.iterations;
          break;
        }
      }
    });
    refresh_pre_activation(net, m);
    return result;
  }

  /// LPOM's update of block m from its optimality condition (METHODS.md §5.5):
  ///   z_m = f_m(a_m - (lambda_{m+1}/lambda_m) W_{m+1}^T (f_{m+1}(a_{m+1}) - z_{m+1}))  (m < L)
  ///   z_L = f_L(a_L - (w/lambda_L) grad l(z_L))                                        (m = L)
  /// iterated `iterations` times. Where an update would increase J it is replaced by a
  /// proximal-gradient step, so the block objective never increases.
  template <class Program>
  block_result fixed_point_block(const Program& net, const MatrixCRef<S>& y,
                                 const lifted_weights<S>& weights, Index m, Index iterations) {
    block_result result;
    const auto layer = std::size_t(m - 1);
    const S lambda = weights.lambda[layer];
    Matrix<S>& zm = z_[std::size_t(m)];
    for (; result.iterations < iterations; ++result.iterations) {
      candidate_.resize(zm.rows(), zm.cols());
      const S before = block_value(net, y, weights, m, zm);
      smooth_gradient(net, y, weights, m, zm, gradient_);
      // grad h_m = lambda_{m+1} W^T(...) - lambda_m a_m, so a_m - (grad h_m + lambda_m a_m)/lambda_m
      // is the argument of f in LPOM's update.
      trial_ = -gradient_ / lambda;
      net.layer(m - 1).visit([&](const auto& pair) { activate<S>(pair, trial_, candidate_); });
      if (block_value(net, y, weights, m, candidate_) > before) {
        solve_block(net, y, weights, m, 1, S(0));
        continue;
      }
      difference_ = candidate_ - zm;
      zm.swap(candidate_);
      result.residual = double(difference_.norm()) / std::sqrt(double(zm.cols()));
    }
    refresh_pre_activation(net, m);
    return result;
  }

  /// RMS over samples of the natural residual of every block, z_m - prox_{lambda_m G*}(z_m -
  /// grad h_m(z_m)) (zero exactly at a minimiser of J), summed in squares over the blocks.
  template <class Program>
  double residual(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights) {
    double squares = 0;
    const Index L = Index(z_.size()) - 1;
    for (Index m = 1; m <= L; ++m) {
      const Matrix<S>& zm = z_[std::size_t(m)];
      smooth_gradient(net, y, weights, m, zm, gradient_);
      trial_ = zm - gradient_;
      candidate_.resize(zm.rows(), zm.cols());
      net.layer(m - 1).visit([&](const auto& pair) {
        prox_conj<S>(pair, trial_, weights.lambda[std::size_t(m - 1)], candidate_);
      });
      squares += double((zm - candidate_).squaredNorm());
    }
    return std::sqrt(squares / double(z_.front().cols()));
  }

  /// gradient = sum_k scale_k d_theta E_k(z) as batch means: dW_k = scale_k (f(a_k) - z_k)
  /// z_{k-1}^T / B, db_k = scale_k sum_cols(f(a_k) - z_k) / B (METHODS.md §3).
  template <class Program>
  void parameter_gradient(const Program& net, const std::vector<S>& scale, Vector<S>& gradient) {
    if (gradient.size() != net.parameter_count()) gradient.resize(net.parameter_count());
    const Index L = Index(z_.size()) - 1, B = z_.front().cols();
    for (Index k = 0; k < L; ++k) {
      const auto index = std::size_t(k);
      Matrix<S>& residual = gradient_;
      residual.resize(a_[index].rows(), B);
      net.layer(k).visit([&](const auto& pair) { activate<S>(pair, a_[index], residual); });
      residual -= z_[index + 1];
      const S factor = scale[index] / S(B);
      net.layer(k).weights(gradient).noalias() = factor * residual * z_[index].transpose();
      net.layer(k).bias(gradient) = factor * residual.rowwise().sum();
    }
  }

  /// Gradient steps with backtracking on layer k's (0-based) parameters for the current z:
  /// lambda_k mean_B [G_k(W_k z_{k-1} + b_k) - <z_k, W_k z_{k-1} + b_k>], J's W-block, which is
  /// convex and independent of the other layers' parameters. Stops when the gradient's norm is
  /// below `tolerance`; never increases J. Returns the steps taken. `shards` averages the
  /// gradient and the objective values over a batch split over several processes
  /// (methods/batch_reduction.hpp), so that every process takes the same steps.
  template <class Program, BatchReduction<S> Reduction>
  Index descend_weights(Program& net, const lifted_weights<S>& weights, Index k, Index iterations,
                        S tolerance, const Reduction& shards) {
    const auto index = std::size_t(k);
    const S lambda = weights.lambda[index], inverse_batch = S(1) / S(z_.front().cols());
    auto W = net.weights(k);
    auto b = net.bias(k);
    auto objective = [&](const Matrix<S>& a) {
      S value = 0;
      net.layer(k).visit([&](const auto& pair) {
        value = potential<S>(pair, a).sum() - z_[index + 1].cwiseProduct(a).sum();
      });
      return lambda * inverse_batch * value;
    };
    // [dW (column-major) | db | objective], averaged by one call of the reduction.
    const Index rows = W.rows(), cols = W.cols(), count = rows * cols + rows;
    weight_means_.resize(count + 1);
    const ConstMatrixMap<S> weight_gradient(weight_means_.data(), rows, cols);
    const ConstVectorMap<S> bias_gradient(weight_means_.data() + rows * cols, rows);
    if (weight_steps_.size() != a_.size()) weight_steps_.assign(a_.size(), S(1));
    S& step = weight_steps_[index];
    Index taken = 0;
    for (; taken < iterations; ++taken) {
      net.affine(k, z_[index], a_[index]);
      gradient_.resize(a_[index].rows(), a_[index].cols());
      net.layer(k).visit([&](const auto& pair) { activate<S>(pair, a_[index], gradient_); });
      gradient_ -= z_[index + 1];
      MatrixMap<S>(weight_means_.data(), rows, cols).noalias() =
          (lambda * inverse_batch) * gradient_ * z_[index].transpose();
      VectorMap<S>(weight_means_.data() + rows * cols, rows) =
          (lambda * inverse_batch) * gradient_.rowwise().sum();
      weight_means_(count) = objective(a_[index]);
      shards.mean(std::span<S>(weight_means_.data(), std::size_t(weight_means_.size())));
      const S before = weight_means_(count);
      const S squared = weight_means_.head(count).squaredNorm();
      if (std::sqrt(squared) <= tolerance) break;
      saved_weights_ = W;
      saved_bias_ = b;
      bool accepted = false;
      for (int halving = 0; halving < 60 && !accepted; ++halving) {
        W = saved_weights_ - step * weight_gradient;
        b = saved_bias_ - step * bias_gradient;
        net.affine(k, z_[index], next_);
        S trial = objective(next_);
        shards.mean(std::span<S>(&trial, 1));
        accepted = trial <= before - step * squared / 2;  // Armijo
        if (!accepted) step /= 2;
      }
      if (!accepted) {  // rounding dominates: keep the parameters
        W = saved_weights_;
        b = saved_bias_;
        break;
      }
      step *= S(1.5);
    }
    net.affine(k, z_[index], a_[index]);
    return taken;
  }

  /// Recomputes a_{m+1} = W_{m+1} z_m + b_{m+1} after block m changed (index m).
  template <class Program>
  void refresh_pre_activation(const Program& net, Index m) {
    if (m < Index(z_.size()) - 1) net.affine(m, z_[std::size_t(m)], a_[std::size_t(m)]);
  }

  /// The step sizes kept across batches (per z-block and per W-block), for checkpoints.
  void save_step_sizes(state_writer& out) const {
    out.write_values<S>(ConstVectorMap<S>(steps_.data(), Index(steps_.size())));
    out.write_values<S>(ConstVectorMap<S>(weight_steps_.data(), Index(weight_steps_.size())));
  }
  void load_step_sizes(state_reader& in) {
    const Vector<S> steps = in.read_values<S>("z-block step sizes");
    const Vector<S> weight_steps = in.read_values<S>("W-block step sizes");
    for (const Vector<S>* sizes : {&steps, &weight_steps})
      if (!((sizes->array() >= S(0)).all() && sizes->allFinite()))
        in.fail("step sizes", "finite and >= 0", "a negative, NaN or Inf entry");
    steps_.assign(steps.begin(), steps.end());
    weight_steps_.assign(weight_steps.begin(), weight_steps.end());
  }

  /// Recomputes every a_k from the current z (after the parameters changed).
  template <class Program>
  void refresh_all(const Program& net) {
    for (Index k = 0; k < Index(a_.size()); ++k) net.affine(k, z_[std::size_t(k)], a_[std::size_t(k)]);
  }

 private:
  /// h_m(candidate) summed over the batch.
  template <class Program>
  S smooth_value(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                 Index m, const Matrix<S>& candidate) {
    const Index L = Index(z_.size()) - 1;
    const auto index = std::size_t(m);
    S value = -weights.lambda[index - 1] * candidate.cwiseProduct(a_[index - 1]).sum();
    if (m == L) return value + weights.loss_weight * net.loss_values(candidate, y).sum();
    net.affine(m, candidate, next_);
    net.layer(m).visit([&](const auto& pair) {
      value += weights.lambda[index] *
               (potential<S>(pair, next_).sum() - z_[index + 1].cwiseProduct(next_).sum());
    });
    return value;
  }

  template <class Program>
  void smooth_gradient(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                       Index m, const Matrix<S>& candidate, Matrix<S>& gradient) {
    const Index L = Index(z_.size()) - 1;
    const auto index = std::size_t(m);
    gradient.resize(candidate.rows(), candidate.cols());
    if (m == L) {
      net.loss().template gradient<S>(candidate, y, gradient);
      gradient *= weights.loss_weight;
    } else {
      net.affine(m, candidate, next_);
      next_activation_.resize(next_.rows(), next_.cols());
      net.layer(m).visit([&](const auto& pair) { activate<S>(pair, next_, next_activation_); });
      next_activation_ -= z_[index + 1];
      gradient.noalias() = weights.lambda[index] * net.weights(m).transpose() * next_activation_;
    }
    gradient -= weights.lambda[index - 1] * a_[index - 1];
  }

  /// The whole objective of block m: h_m plus lambda_m G*_m (summed over the batch).
  template <class Program>
  S block_value(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                Index m, const Matrix<S>& candidate) {
    S conj = 0;
    net.layer(m - 1).visit([&](const auto& pair) { conj = conjugate<S>(pair, candidate).sum(); });
    return smooth_value(net, y, weights, m, candidate) + weights.lambda[std::size_t(m - 1)] * conj;
  }

  /// A per-block step size, kept across calls (starts at 1 / lambda of the block's coupling).
  S& step_size(Index m, const lifted_weights<S>& weights) {
    if (steps_.size() != z_.size()) steps_.assign(z_.size(), S(0));
    S& step = steps_[std::size_t(m)];
    if (!(step > 0)) step = S(1) / std::max(weights.lambda[std::size_t(m - 1)], S(1));
    return step;
  }

  forward_state<S> forward_;
  std::vector<Matrix<S>> z_, a_;
  std::vector<S> steps_, weight_steps_;
  Matrix<S> gradient_, candidate_gradient_, trial_, candidate_, difference_, next_,
      next_activation_;
  Matrix<S> saved_weights_;
  Vector<S> weight_means_, saved_bias_;
};

}  // namespace bilevel::detail
