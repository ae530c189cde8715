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

#include <algorithm>
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
    size_work_buffers();
  }

  const std::vector<Matrix<S>>& z() const { return z_; }
  /// a_k = W_k z_{k-1} + b_k for the current z (index k - 1). Every update below keeps it
  /// current, so the solvers read a_{m+1} at z_m from here instead of recomputing it.
  const std::vector<Matrix<S>>& a() const { return a_; }
  /// The forward pass J started from.
  const forward_state<S>& forward() const { return forward_; }

  /// Per-sample J(z), in a buffer of this object (valid until the next call).
  template <class Program>
  const RowVector<S>& value(const Program& net, const MatrixCRef<S>& y,
                            const lifted_weights<S>& weights) {
    const std::size_t L = z_.size() - 1;
    net.loss_values(z_[L], y, total_);
    total_ *= weights.loss_weight;
    for (std::size_t k = 0; k < L; ++k) {
      block_work& work = blocks_[k];
      net.layer(Index(k)).visit([&](const auto& pair) {
        fenchel_coupling::value<S>(pair, z_[k + 1], a_[k], work.row, work.scratch);
      });
      total_ += weights.lambda[k] * work.row;
    }
    return total_;
  }

  /// Proximal-gradient steps on block m (1..L) until the gradient mapping's RMS is below
  /// `tolerance` or `iterations` steps are taken. Never increases J.
  template <class Program>
  block_result solve_block(const Program& net, const MatrixCRef<S>& y,
                           const lifted_weights<S>& weights, Index m, Index iterations,
                           S tolerance) {
    smooth_gradient(net, y, weights, m, z_[std::size_t(m)], above(m),
                    blocks_[std::size_t(m - 1)].gradient);
    return proximal_steps(net, y, weights, m, iterations, tolerance);
  }

  /// LPOM's update of block m from its optimality condition (METHODS.md §5.5):
  ///   z_m = f_m(a_m - (lambda_{m+1}/lambda_m) W_{m+1}^T (f_{m+1}(a_{m+1}) - z_{m+1}))  (m < L)
  ///   z_L = f_L(a_L - (w/lambda_L) grad l(z_L))                                        (m = L)
  /// iterated `iterations` times. Where an update would increase J it is replaced by a
  /// proximal-gradient step, so the block objective never increases. An accepted update's
  /// value and a_{m+1}, and the gradient a proximal-gradient step leaves behind, are reused at
  /// the next iteration instead of being computed again.
  template <class Program>
  block_result fixed_point_block(const Program& net, const MatrixCRef<S>& y,
                                 const lifted_weights<S>& weights, Index m, Index iterations) {
    block_result result;
    const bool top = m == Index(z_.size()) - 1;
    const S lambda = weights.lambda[std::size_t(m - 1)];
    Matrix<S>& zm = z_[std::size_t(m)];
    block_work& work = blocks_[std::size_t(m - 1)];
    // Whether `before` holds the block objective and work.gradient grad h_m at the current z_m.
    bool value_known = false, gradient_known = false;
    S before = 0;
    for (; result.iterations < iterations; ++result.iterations) {
      if (!value_known) before = block_value(net, y, weights, m, zm, above(m));
      if (!gradient_known) smooth_gradient(net, y, weights, m, zm, above(m), work.gradient);
      value_known = gradient_known = true;
      // grad h_m = lambda_{m+1} W^T(...) - lambda_m a_m, so a_m - (grad h_m + lambda_m a_m)/lambda_m
      // is the argument of f in LPOM's update.
      work.trial = -work.gradient / lambda;
      net.layer(m - 1).visit(
          [&](const auto& pair) { activate<S>(pair, work.trial, work.candidate); });
      if (!top) net.affine(m, work.candidate, work.candidate_above);
      const S after = block_value(net, y, weights, m, work.candidate,
                                  top ? work.candidate : work.candidate_above);
      if (after > before) {
        proximal_steps(net, y, weights, m, 1, S(0));
        value_known = false;
        continue;
      }
      work.difference = work.candidate - zm;
      zm.swap(work.candidate);
      if (!top) a_[std::size_t(m)].swap(work.candidate_above);
      before = after;
      gradient_known = false;
      result.residual = double(work.difference.norm()) / std::sqrt(double(zm.cols()));
    }
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
      block_work& work = blocks_[std::size_t(m - 1)];
      smooth_gradient(net, y, weights, m, zm, above(m), work.gradient);
      work.trial = zm - work.gradient;
      net.layer(m - 1).visit([&](const auto& pair) {
        prox_conj<S>(pair, work.trial, weights.lambda[std::size_t(m - 1)], work.candidate);
      });
      squares += double((zm - work.candidate).squaredNorm());
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
      Matrix<S>& residual = layers_[index].residual;
      net.layer(k).visit([&](const auto& pair) { activate<S>(pair, a_[index], residual); });
      residual -= z_[index + 1];
      const S factor = scale[index] / S(B);
      net.layer(k).weights(gradient).noalias() = factor * residual * z_[index].transpose();
      net.layer(k).bias(gradient) = factor * residual.rowwise().sum();
    }
  }

  /// Gradient steps with backtracking on layer k's (0-based) parameters for the current z:
  /// lambda_k mean_B [G_k(W_k z_{k-1} + b_k) - <z_k, W_k z_{k-1} + b_k>], J's W-block, which is
  /// convex and independent of the other layers' parameters (each layer has its own buffers).
  /// Stops when the gradient's norm is below `tolerance`; never increases J. Returns the steps
  /// taken. `shards` averages the gradient and the objective values over a batch split over
  /// several processes (methods/batch_reduction.hpp), so that every process takes the same
  /// steps.
  template <class Program, BatchReduction<S> Reduction>
  Index descend_weights(Program& net, const lifted_weights<S>& weights, Index k, Index iterations,
                        S tolerance, const Reduction& shards) {
    const auto index = std::size_t(k);
    const S lambda = weights.lambda[index], inverse_batch = S(1) / S(z_.front().cols());
    auto W = net.weights(k);
    auto b = net.bias(k);
    weight_work& work = layers_[index];
    auto objective = [&](const Matrix<S>& a) {
      S value = 0;
      net.layer(k).visit([&](const auto& pair) {
        potential<S>(pair, a, work.row);
        value = work.row.sum() - z_[index + 1].cwiseProduct(a).sum();
      });
      return lambda * inverse_batch * value;
    };
    // [dW (column-major) | db | objective], averaged by one call of the reduction.
    const Index rows = W.rows(), cols = W.cols(), count = rows * cols + rows;
    work.means.resize(count + 1);
    const ConstMatrixMap<S> weight_gradient(work.means.data(), rows, cols);
    const ConstVectorMap<S> bias_gradient(work.means.data() + rows * cols, rows);
    if (weight_steps_.size() != a_.size()) weight_steps_.assign(a_.size(), S(1));
    S& step = weight_steps_[index];
    Index taken = 0;
    for (; taken < iterations; ++taken) {
      net.layer(k).visit([&](const auto& pair) { activate<S>(pair, a_[index], work.residual); });
      work.residual -= z_[index + 1];
      MatrixMap<S>(work.means.data(), rows, cols).noalias() =
          (lambda * inverse_batch) * work.residual * z_[index].transpose();
      VectorMap<S>(work.means.data() + rows * cols, rows) =
          (lambda * inverse_batch) * work.residual.rowwise().sum();
      work.means(count) = objective(a_[index]);
      shards.mean(std::span<S>(work.means.data(), std::size_t(work.means.size())));
      const S before = work.means(count);
      const S squared = work.means.head(count).squaredNorm();
      if (std::sqrt(squared) <= tolerance) break;
      work.saved_weights = W;
      work.saved_bias = b;
      bool accepted = false;
      for (int halving = 0; halving < 60 && !accepted; ++halving) {
        W = work.saved_weights - step * weight_gradient;
        b = work.saved_bias - step * bias_gradient;
        net.affine(k, z_[index], work.next);
        S trial = objective(work.next);
        shards.mean(std::span<S>(&trial, 1));
        accepted = trial <= before - step * squared / 2;  // Armijo
        if (!accepted) step /= 2;
      }
      if (!accepted) {  // rounding dominates: keep the parameters
        W = work.saved_weights;
        b = work.saved_bias;
        break;
      }
      a_[index].swap(work.next);  // a_k at the accepted parameters
      step *= S(1.5);
    }
    return taken;
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

 private:
  /// Work buffers of z-block m (index m - 1) and of W-block k (index k): every block has its
  /// own, sized by size_work_buffers when a batch starts, so no buffer changes size from one
  /// block to the next and nothing is allocated after the first batch; W-blocks share nothing.
  struct block_work {
    Matrix<S> gradient, candidate_gradient, trial, candidate, difference;
    Matrix<S> candidate_above;   ///< W_{m+1} candidate + b_{m+1} (m < L)
    Matrix<S> above_residual;    ///< f_{m+1}(W_{m+1} z + b_{m+1}) - z_{m+1}
    RowVector<S> row, scratch;   ///< per-sample terms before they are summed
  };
  struct weight_work {
    Matrix<S> residual, saved_weights, next;
    /// [dW (column-major) | db | objective]: one buffer, which a batch reduction averages in
    /// one call.
    Vector<S> means, saved_bias;
    RowVector<S> row;
  };

  /// Sizes every block's buffers for this batch, so that a path a solver takes for the first
  /// time late in training (LPOM's proximal fallback, say) allocates nothing; a no-op when
  /// the batch size is unchanged.
  void size_work_buffers() {
    const std::size_t L = a_.size();
    const Index B = z_.front().cols();
    blocks_.resize(L);
    layers_.resize(L);
    for (std::size_t k = 0; k < L; ++k) {
      const Index rows = a_[k].rows();
      block_work& block = blocks_[k];  // z-block k + 1
      for (Matrix<S>* m : {&block.gradient, &block.candidate_gradient, &block.trial,
                           &block.candidate, &block.difference})
        m->resize(rows, B);
      if (k + 1 < L) {
        block.candidate_above.resize(a_[k + 1].rows(), B);
        block.above_residual.resize(a_[k + 1].rows(), B);
      }
      block.row.resize(B);
      block.scratch.resize(B);
      weight_work& layer = layers_[k];  // W-block k
      layer.residual.resize(rows, B);
      layer.next.resize(rows, B);
      layer.row.resize(B);
    }
  }

  /// solve_block's steps, from work.gradient = grad h_m(z_m), which they keep current.
  template <class Program>
  block_result proximal_steps(const Program& net, const MatrixCRef<S>& y,
                              const lifted_weights<S>& weights, Index m, Index iterations,
                              S tolerance) {
    block_result result;
    const bool top = m == Index(z_.size()) - 1;
    const S lambda = weights.lambda[std::size_t(m - 1)];
    S& step = step_size(m, weights);
    Matrix<S>& zm = z_[std::size_t(m)];
    block_work& work = blocks_[std::size_t(m - 1)];
    net.layer(m - 1).visit([&](const auto& pair) {
      for (; result.iterations < iterations; ++result.iterations) {
        // Backtrack until the step is below 1/L along the move: for convex h,
        // <grad h(z+) - grad h(z), d> <= |d|^2 / t implies the quadratic upper model
        // h(z+) <= h(z) + <grad h(z), d> + |d|^2 / (2t), hence no increase of the block
        // objective; unlike comparing values of h it stays exact near the minimiser.
        bool accepted = false;
        for (int halving = 0; halving < 60 && !accepted; ++halving) {
          work.trial = zm - step * work.gradient;
          prox_conj<S>(pair, work.trial, step * lambda, work.candidate);
          work.difference = work.candidate - zm;
          if (!top) net.affine(m, work.candidate, work.candidate_above);
          smooth_gradient(net, y, weights, m, work.candidate,
                          top ? work.candidate : work.candidate_above, work.candidate_gradient);
          const S curvature =
              (work.candidate_gradient - work.gradient).cwiseProduct(work.difference).sum();
          accepted = curvature <= work.difference.squaredNorm() / step;
          if (!accepted) step /= 2;
        }
        if (!accepted) break;  // rounding dominates the move: at a minimiser
        zm.swap(work.candidate);
        work.gradient.swap(work.candidate_gradient);
        if (!top) a_[std::size_t(m)].swap(work.candidate_above);  // a_{m+1} at the new z_m
        result.residual = double(work.difference.norm() / step) / std::sqrt(double(zm.cols()));
        step *= S(1.5);  // let the step grow back where the curvature allows
        if (result.residual <= double(tolerance)) {
          ++result.iterations;
          break;
        }
      }
    });
    return result;
  }


  /// W_{m+1} z_m + b_{m+1} at the current z_m (block m < L); the top block has no layer above,
  /// and what this returns for it is never read.
  const Matrix<S>& above(Index m) const {
    return a_[std::size_t(std::min(m, Index(a_.size()) - 1))];
  }

  /// h_m(candidate) summed over the batch, given `above` = W_{m+1} candidate + b_{m+1}.
  template <class Program>
  S smooth_value(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                 Index m, const Matrix<S>& candidate, const Matrix<S>& above) {
    const Index L = Index(z_.size()) - 1;
    const auto index = std::size_t(m);
    block_work& work = blocks_[index - 1];
    S value = -weights.lambda[index - 1] * candidate.cwiseProduct(a_[index - 1]).sum();
    if (m == L) {
      net.loss_values(candidate, y, work.row);
      return value + weights.loss_weight * work.row.sum();
    }
    net.layer(m).visit([&](const auto& pair) {
      potential<S>(pair, above, work.row);
      value += weights.lambda[index] *
               (work.row.sum() - z_[index + 1].cwiseProduct(above).sum());
    });
    return value;
  }

  /// grad h_m at `candidate`, given `above` = W_{m+1} candidate + b_{m+1} (read for m < L).
  template <class Program>
  void smooth_gradient(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                       Index m, const Matrix<S>& candidate, const Matrix<S>& above,
                       Matrix<S>& gradient) {
    const Index L = Index(z_.size()) - 1;
    const auto index = std::size_t(m);
    if (m == L) {
      net.loss().template gradient<S>(candidate, y, gradient);
      gradient *= weights.loss_weight;
    } else {
      Matrix<S>& residual = blocks_[index - 1].above_residual;
      net.layer(m).visit([&](const auto& pair) { activate<S>(pair, above, residual); });
      residual -= z_[index + 1];
      gradient.noalias() = weights.lambda[index] * net.weights(m).transpose() * residual;
    }
    gradient -= weights.lambda[index - 1] * a_[index - 1];
  }

  /// The whole objective of block m: h_m plus lambda_m G*_m (summed over the batch).
  template <class Program>
  S block_value(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                Index m, const Matrix<S>& candidate, const Matrix<S>& above) {
    S conj = 0;
    RowVector<S>& row = blocks_[std::size_t(m - 1)].row;
    net.layer(m - 1).visit([&](const auto& pair) {
      conjugate<S>(pair, candidate, row);
      conj = row.sum();
    });
    return smooth_value(net, y, weights, m, candidate, above) +
           weights.lambda[std::size_t(m - 1)] * conj;
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
  std::vector<block_work> blocks_;
  std::vector<weight_work> layers_;
  RowVector<S> total_;
};

}  // namespace bilevel::detail
