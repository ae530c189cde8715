#pragma once
/// \file
/// The Fenchel-coupled lifted objective shared by CHL, LPOM and FLN (docs/methods.md §5.3, §5.5)
/// and its block coordinate descent. Per sample,
/// ~~~{.unparsed}
///   J(z) = w l(z_L, y) + sum_k lambda_k E_k,   E_k = G*_k(z_k) + G_k(a_k) - <z_k, a_k>,
///   a_k = W_k z_{k-1} + b_k,
/// ~~~
/// over z_1..z_L (z_0 = x) for fixed parameters. With the output unlifted (FLN, §5.5),
/// z_L = f_L(a_L) is no variable, E_L is absent and the loss is the true loss w l(f_L(a_L), y).
/// J is convex in each block z_m (not jointly: docs/methods.md §3), so block coordinate descent
/// never increases it; different starts may end at different stationary points, all O(s) from
/// BP as the spacing s -> 0.
///
/// Displacement form (§5.6b). The solver iterates on d_k = z_k - z_k^0 (z^0 the forward pass,
/// J's minimiser when w = 0) and keeps e_k = W_k d_{k-1} = a_k - a_k^0, so that what an estimate
/// is made of keeps its digits at small spacings, in float too:
/// ~~~{.unparsed}
///   r_k = f(a_k) - z_k = [f(a_k^0 + e_k) - f(a_k^0)] - d_k    (the pair's exact difference).
/// ~~~
/// Block m's objective is lambda_m [G*(z_m) - <z_m, a_m>] + h_m(z_m), h_m the terms of the layers
/// above, whose gradient is the feedback
/// ~~~{.unparsed}
///   q_m = lambda_{m+1} W_{m+1}^T r_{m+1}                  (layer m+1 lifted)
///   q_m = w W_L^T J_{f_L}(a_L)^T grad l(f_L(a_L))         (m = L-1 under an unlifted output)
///   q_L = w grad l(z_L)                                    (m = L, lifted output).
/// ~~~
/// Two block updates:
/// * proximal gradient, z_m <- prox_{t lambda_m G*}(z_m - t (q_m - lambda_m a_m)), in
///   displacement form d_m <- prox_conj_displacement(a_m^0, d_m + t lambda_m e_m - t q_m,
///   t lambda_m), with t backtracked until h_m's Bregman divergence
///   D_h(z+, z) = h_m(z+) - h_m(z) - <grad h_m(z), z+ - z> <= |z+ - z|^2 / (2 t), which the
///   prox step's optimality (with its strong convexity) more than offsets, so the block
///   objective cannot increase (docs/methods.md §5.5); next to the loss, and above pairs
///   without a closed-form D_G, the test takes the curvature <q(z+) - q(z), z+ - z> in place of
///   2 D_h, which bounds D_h for convex h_m. Under an unlifted output h_{L-1} is convex where
///   l o f_L is (softmax cross-entropy on identity logits, MSE through an identity output);
/// * LPOM's fixed point of the block's optimality condition z_m = f(a_m - q_m / lambda_m),
///   d_m <- f(a_m^0 + v) - f(a_m^0) with v = e_m - q_m / lambda_m. Per sample it changes J by
///   exactly
///   ~~~{.unparsed}
///     J(z+) - J(z) = lambda_{m+1} D_{G_{m+1}}(a_{m+1}^+, a_{m+1}) - lambda_m D_{G_m}(u^+, u),
///   ~~~
///   D_G the Bregman divergence of G and u the pre-activation with z_m = f(u) (for the block
///   under an unlifted output the first term is w D of l(f_L(.)), for a lifted output block w D
///   of l); a sample whose update would raise J takes a proximal-gradient step instead.
/// Sweeps run top block first until the stopping rule of methods/stopping_rule.hpp holds for
/// every sample and block, or to the cap.
///
/// Papers: LPOM (Li, Fang & Lin, AAAI 2019, arXiv:1811.01501); FLN (Gu, Askari & El Ghaoui,
/// AISTATS 2020, arXiv:1811.08039); CHL's clamped energy as in Zach 2021 (arXiv:2105.07231).

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "../activations/concept.hpp"
#include "../activations/displacement.hpp"
#include "../core/error.hpp"
#include "../core/finite.hpp"
#include "../core/state_stream.hpp"
#include "../couplings/fenchel.hpp"
#include "../layers/packed_maps.hpp"
#include "../program.hpp"
#include "active_set.hpp"
#include "batch_reduction.hpp"
#include "descent.hpp"
#include "stopping_rule.hpp"

namespace bilevel::detail {

/// The weights of J: lambda_k for k = 1..L (index k - 1), w on the loss, and whether z_L is a
/// variable (CHL, LPOM) or the output f_L(a_L) of the forward map (FLN).
template <Scalar S>
struct lifted_weights {
  std::vector<S> lambda;
  S loss_weight = 1;
  bool output_lifted = true;
};

/// How the blocks are updated.
enum class block_update { proximal_gradient, fixed_point };

/// How a solve ended.
struct lifted_solve {
  Index sweeps = 0;
  Index unconverged = 0;  ///< samples that had not met the stopping rule at the cap
  /// Fixed-point updates only: the share of per-sample updates replaced by a proximal step.
  double safeguarded = std::numeric_limits<double>::quiet_NaN();
};

template <Scalar S>
class lifted_objective {
 public:
  /// The forward pass of x, and the solver's start: z = z^0 (d = 0), or the first-order start
  /// of §5.6b (bottom up, z_k = f(W_k z_{k-1} + b_k - s_k g_k) with g_k BP's error at z_k and
  /// s_k = w / lambda_k, the spacing of layer k).
  template <class Program>
  void start(const Program& net, const MatrixCRef<S>& x, const MatrixCRef<S>& y,
             const lifted_weights<S>& weights, inner_start start) {
    net.forward(x, forward_);
    size_work_buffers(net);
    width_ = x.cols();
    for (std::size_t k = 0; k < e_.size(); ++k) {
      d_[k + 1].setZero();
      v_[k + 1].setZero();
      e_[k].setZero();
    }
    output_lifted_ = weights.output_lifted;
    if (start == inner_start::first_order) first_order_start(net, y, weights);
    materialize(net);
  }

  /// Block coordinate descent from the current state, top block first, until the stopping
  /// rule holds for every sample and block or `stopping.max_iterations` sweeps; each block takes
  /// up to `block_iterations` updates per sweep (fewer where the rule holds for the block).
  /// Active set: a sample that met the rule at the end of a sweep is retired, it keeps that
  /// state and the sweeps go on over the others only (J is separable over samples, §5.6b), so
  /// a batch costs the sweeps its samples need, not the slowest sample's count for all.
  /// With `extrapolation` > 0 the sweeps are accelerated (extrapolate()); 0 gives plain block
  /// coordinate descent.
  template <class Program>
  lifted_solve solve(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                     const stopping_settings<S>& stopping, block_update update,
                     Index block_iterations, S extrapolation) {
    lifted_solve result;
    const Index top = top_block(weights), B = y.cols();
    if (top == 0) return result;  // one unlifted layer: nothing to solve
    safeguarded_ = 0;
    fixed_point_updates_ = 0;
    rule_.start(top, B, stopping.tolerance);
    // The weights stay fixed through the solve, which multiplies by them some hundred times.
    const auto frozen = maps_.frozen(net, B);
    for (std::size_t i = 1; i < d_.size(); ++i) base_[i] = forward_.z[i].colwise().norm();
    order_.start(y);
    remember_state(top, net.depth());
    sweeps_since_restart_.head(B).setOnes();
    for (result.sweeps = 1; result.sweeps <= stopping.max_iterations; ++result.sweeps) {
      const MatrixCRef<S> active_labels = order_.labels(width_);
      for (Index m = top; m >= 1; --m) {
        if (update == block_update::fixed_point)
          fixed_point_block(net, active_labels, weights, m, block_iterations, stopping.tolerance);
        else
          proximal_block(net, active_labels, weights, m, block_iterations, stopping.tolerance);
      }
      for (Index m = 1; m <= top; ++m) {
        const auto i = std::size_t(m);
        live(step_norm_) = (live(d_[i]) - live(previous_[i])).colwise().norm();
        live(displacement_norm_) = live(d_[i]).colwise().norm();
        rule_.observe(m - 1, live(step_norm_), live(displacement_norm_),
                      rounding_scale(m, weights));
      }
      if (rule_.end_iteration()) break;
      width_ = rule_.retire_converged([this](Index p, Index q) { swap_samples(p, q); });
      if (extrapolation > 0 && result.sweeps < stopping.max_iterations)
        extrapolate(net, order_.labels(width_), weights, extrapolation);
      else
        for (Index m = 1; m <= top; ++m) live(previous_[std::size_t(m)]) = live(d_[std::size_t(m)]);
    }
    result.sweeps = std::min(result.sweeps, stopping.max_iterations);
    result.unconverged = rule_.unconverged();
    order_.restore([this](Index p, Index q) { swap_samples(p, q); });
    width_ = B;
    if (update == block_update::fixed_point && fixed_point_updates_ > 0)
      result.safeguarded = double(safeguarded_) / double(fixed_point_updates_);
    materialize(net);
    return result;
  }

  /// z_0..z_L and a_1..a_L (index k - 1) of the current state (after start or solve).
  const std::vector<Matrix<S>>& z() const { return z_; }
  const std::vector<Matrix<S>>& a() const { return a_; }
  /// The forward pass J started from.
  const forward_state<S>& forward() const { return forward_; }

  /// Per-sample J at the current state, in a buffer of this object (valid until the next call).
  template <class Program>
  const RowVector<S>& value(const Program& net, const MatrixCRef<S>& y,
                            const lifted_weights<S>& weights) {
    const std::size_t L = z_.size() - 1;
    net.loss_values(z_[L], y, total_);
    total_ *= weights.loss_weight;
    const std::size_t lifted = weights.output_lifted ? L : L - 1;
    for (std::size_t k = 0; k < lifted; ++k) {
      block_work& work = blocks_[k];
      net.layer(Index(k)).visit([&](const auto& pair) {
        fenchel_coupling::value<S>(pair, z_[k + 1], a_[k], work.row, work.scratch);
      });
      total_ += weights.lambda[k] * work.row;
    }
    return total_;
  }

  /// RMS over samples of the natural residual of every block, z_m - prox_{lambda_m G*}(z_m -
  /// (q_m - lambda_m a_m)), zero exactly at J's minimiser, summed in squares over the blocks.
  template <class Program>
  double residual(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights) {
    double squares = 0;
    for (Index m = 1; m <= top_block(weights); ++m) {
      const auto i = std::size_t(m);
      block_work& work = blocks_[i - 1];
      const S lambda = weights.lambda[i - 1];
      feedback(net, y, weights, m, d_[i], above(m), work.feedback);
      work.shift = d_[i] + lambda * e_[i - 1] - work.feedback;
      net.layer(m - 1).visit([&](const auto& pair) {
        prox_conj_displacement<S>(pair, forward_.a[i - 1], work.shift, lambda, work.candidate);
      });
      squares += double((d_[i] - work.candidate).squaredNorm());
    }
    return std::sqrt(squares / double(z_.front().cols()));
  }

  /// gradient = d_theta J / w at the current state, as batch means (§3):
  /// lifted layer k: dW_k = (lambda_k / w) r_k z_{k-1}^T / B, db_k = (lambda_k / w) sum_cols r_k / B;
  /// unlifted output: dW_L = delta_L z_{L-1}^T / B with delta_L = J_{f_L}(a_L)^T grad l.
  template <class Program>
  void parameter_gradient(const Program& net, const MatrixCRef<S>& y,
                          const lifted_weights<S>& weights, Vector<S>& gradient) {
    if (gradient.size() != net.parameter_count()) gradient.resize(net.parameter_count());
    const Index L = net.depth(), B = y.cols();
    for (Index k = 0; k < L; ++k) {
      const auto i = std::size_t(k);
      Matrix<S>& signal = layers_[i].residual;
      S factor = S(1) / S(B);
      if (k + 1 == L && !weights.output_lifted) {
        output_signal(net, y, z_[i + 1], signal);
      } else {
        coupling_residual(net, k + 1, e_[i], d_[i + 1], signal);
        factor *= weights.lambda[i] / weights.loss_weight;
      }
      net.layer(k).parameter_gradient(z_[i], signal, factor, gradient);
    }
  }

  /// Gradient steps with backtracking on layer k's (0-based) parameters for the current z, on
  /// J's W-block, which is convex and independent of the other layers' parameters: a lifted
  /// layer's lambda_k mean_B [G_k(W_k z_{k-1} + b_k) - <z_k, W_k z_{k-1} + b_k>], an unlifted
  /// output's w mean_B l(f_L(W_L z_{L-1} + b_L)). Stops when the gradient's norm is below
  /// `tolerance`; never increases J. Returns the steps taken. `shards` averages the gradient and
  /// the objective values over a batch split over several processes
  /// (methods/batch_reduction.hpp), so that every process takes the same steps.
  template <class Program, BatchReduction<S> Reduction>
  Index descend_weights(Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                        Index k, Index iterations, S tolerance, const Reduction& shards) {
    const auto index = std::size_t(k);
    const bool loss_layer = k + 1 == net.depth() && !weights.output_lifted;
    const S scale =
        (loss_layer ? weights.loss_weight : weights.lambda[index]) / S(z_.front().cols());
    auto W = net.weights(k);
    auto b = net.bias(k);
    weight_work& work = layers_[index];
    auto objective = [&](const Matrix<S>& a) {
      S value = 0;
      net.layer(k).visit([&](const auto& pair) {
        if (loss_layer) {
          activate<S>(pair, a, work.output);
          net.loss_values(work.output, y, work.row);
          value = work.row.sum();
        } else {
          potential<S>(pair, a, work.row);
          value = work.row.sum() - z_[index + 1].cwiseProduct(a).sum();
        }
      });
      return scale * value;
    };
    // [dW (column-major) | db | objective], averaged by one call of the reduction.
    const Index rows = W.rows(), cols = W.cols(), count = rows * cols + b.size();
    work.means.resize(count + 1);
    const MatrixMap<S> weight_gradient(work.means.data(), rows, cols);
    const VectorMap<S> bias_gradient(work.means.data() + rows * cols, b.size());
    if (weight_steps_.size() != a_.size()) weight_steps_.assign(a_.size(), S(1));
    S& step = weight_steps_[index];
    Index taken = 0;
    for (; taken < iterations; ++taken) {
      if (loss_layer) {
        output_signal(net, y, z_[index + 1], work.residual);
      } else {
        net.layer(k).visit([&](const auto& pair) { activate<S>(pair, a_[index], work.residual); });
        work.residual -= z_[index + 1];
      }
      net.layer(k).parameter_gradient(z_[index], work.residual, scale, weight_gradient,
                                      bias_gradient);
      work.means(count) = objective(a_[index]);
      shards.mean(std::span<S>(work.means.data(), std::size_t(work.means.size())));
      const S before = work.means(count);
      const S squared = work.means.head(count).squaredNorm();
      if (std::sqrt(squared) <= tolerance) break;
      work.saved_weights = W;
      work.saved_bias = b;
      const bool accepted = detail::armijo_backtracking(
                                step, before, squared, S(0.5), 60,
                                [&](S t) {
                                  W = work.saved_weights - t * weight_gradient;
                                  b = work.saved_bias - t * bias_gradient;
                                },
                                [&] {
                                  net.affine(k, z_[index], work.next);
                                  S trial = objective(work.next);
                                  shards.mean(std::span<S>(&trial, 1));
                                  return trial;
                                })
                                .accepted;
      if (!accepted) {  // rounding dominates: keep the parameters
        W = work.saved_weights;
        b = work.saved_bias;
        break;
      }
      a_[index].swap(work.next);  // a_k at the accepted parameters
      if (loss_layer) z_[index + 1] = work.output;
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
      if (!((sizes->array() >= S(0)).all() && all_finite(*sizes)))
        in.fail("step sizes", "finite and >= 0", "a negative, NaN or Inf entry");
    steps_.assign(steps.begin(), steps.end());
    weight_steps_.assign(weight_steps.begin(), weight_steps.end());
  }

 private:
  /// Work buffers of z-block m (index m - 1); every block has its own, sized when a batch
  /// starts, so nothing changes size from one block to the next and nothing is allocated after
  /// the first batch.
  struct block_work {
    Matrix<S> feedback;             ///< q_m at the current z_m
    Matrix<S> candidate, candidate_feedback, candidate_above, candidate_preimage;
    Matrix<S> shift, move, preimage_move, before;
    Matrix<S> above_move, above_base;  ///< LPOM's divergence of the layer above
    Matrix<S> fallback, fallback_feedback, fallback_above, fallback_preimage;
    Matrix<S> above_residual;       ///< r_{m+1}, or a_L under an unlifted output
    Matrix<S> output_signal;        ///< delta_L = J_{f_L}(a_L)^T grad l under an unlifted output
    Matrix<S> output, output_gradient;  ///< f_L(a_L) and grad l there (blocks under the output)
    /// z_L at the state, the candidate and the fallback of LPOM's safeguard (output blocks).
    Matrix<S> state_output, candidate_output, fallback_output;
    RowVector<S> row, scratch, change;
    std::vector<char> accepted;
  };
  struct weight_work {
    Matrix<S> residual, saved_weights, next, output;
    /// [dW (column-major) | db | objective]: one buffer, which a batch reduction averages in
    /// one call.
    Vector<S> means, saved_bias;
    RowVector<S> row;
  };

  /// The highest block that is a variable: L with a lifted output, L - 1 without.
  Index top_block(const lifted_weights<S>& weights) const {
    const Index L = Index(e_.size());
    return weights.output_lifted ? L : L - 1;
  }

  /// e_{m+1} = a_{m+1} - a_{m+1}^0 for block m (its "above"); the top block has no layer above,
  /// and what this returns for it is never read.
  const Matrix<S>& above(Index m) const { return e_[std::size_t(std::min(m, Index(e_.size()) - 1))]; }

  template <class Program>
  void size_work_buffers(const Program& net) {
    const std::size_t L = forward_.a.size();
    const Index B = forward_.z.front().cols();
    d_.resize(L + 1);
    v_.resize(L + 1);
    previous_.resize(L + 1);
    previous_preimage_.resize(L + 1);
    previous_above_.resize(L + 1);
    base_.resize(L + 1);
    z_.resize(L + 1);
    e_.resize(L);
    a_.resize(L);
    blocks_.resize(L);
    layers_.resize(L);
    z_[0] = forward_.z[0];
    for (RowVector<S>* r : {&step_norm_, &displacement_norm_, &rounding_, &sweeps_since_restart_,
                            &factor_, &change_, &change_scale_})
      r->resize(B);
    for (std::size_t k = 0; k < L; ++k) {
      const Index rows = forward_.a[k].rows();
      for (Matrix<S>* m : {&d_[k + 1], &v_[k + 1], &previous_[k + 1], &previous_preimage_[k + 1],
                           &z_[k + 1], &e_[k], &a_[k]})
        m->resize(rows, B);
      block_work& block = blocks_[k];  // z-block k + 1
      for (Matrix<S>* m : {&block.feedback, &block.candidate, &block.candidate_feedback,
                           &block.candidate_preimage, &block.shift, &block.move,
                           &block.preimage_move, &block.before, &block.fallback,
                           &block.fallback_feedback, &block.fallback_preimage})
        m->resize(rows, B);
      if (k + 1 < L) {
        const Index above_rows = forward_.a[k + 1].rows();
        for (Matrix<S>* m : {&block.candidate_above, &block.fallback_above, &block.above_residual,
                             &block.output_signal, &block.above_move, &block.above_base,
                             &previous_above_[k + 1]})
          m->resize(above_rows, B);
      }
      for (Matrix<S>* m : {&block.output, &block.output_gradient, &block.state_output,
                           &block.candidate_output, &block.fallback_output})
        m->resize(net.output_size(), B);
      for (RowVector<S>* r : {&block.row, &block.scratch, &block.change}) r->resize(B);
      block.accepted.resize(std::size_t(B));
      weight_work& layer = layers_[k];  // W-block k
      layer.residual.resize(rows, B);
      layer.next.resize(rows, B);
      layer.output.resize(rows, B);
      layer.row.resize(B);
    }
  }

  /// r_k = f_k(a_k^0 + e_k) - f_k(a_k^0) - d_k: layer k's coupling residual f(a_k) - z_k.
  template <class Program>
  void coupling_residual(const Program& net, Index k, const Matrix<S>& e, const Matrix<S>& d,
                         Matrix<S>& out) const {
    net.layer(k - 1).visit([&](const auto& pair) {
      difference<S>(pair, live(forward_.a[std::size_t(k - 1)]), live(e), live(out));
    });
    live(out) -= live(d);
  }

  /// delta_L = J_{f_L}(a_L)^T grad l(f_L(a_L)) for an unlifted output whose activation
  /// `output` = f_L(a_L) is given (a_L = a_L^0 + e_L read from a_).
  template <class Program>
  void output_signal(const Program& net, const MatrixCRef<S>& y, const Matrix<S>& output,
                     Matrix<S>& out) {
    const Index L = net.depth();
    Matrix<S>& gradient = blocks_[std::size_t(L - 1)].output_gradient;
    net.loss_gradient(output, y, gradient);
    net.layer(L - 1).visit([&](const auto& pair) {
      vjp<S>(pair, a_[std::size_t(L - 1)], gradient, out);
    });
  }

  /// q_m (see the file comment) with block m at displacement `d` and `e_above` = W_{m+1} d; for
  /// the blocks next to the loss, the output z_L it is taken at goes to `output` (work.output
  /// when null).
  template <class Program>
  void feedback(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                Index m, const Matrix<S>& d, const Matrix<S>& e_above, Matrix<S>& out,
                Matrix<S>* output = nullptr) {
    const Index L = net.depth();
    const auto i = std::size_t(m);
    block_work& work = blocks_[i - 1];
    Matrix<S>& z_out = output ? *output : work.output;
    if (m == L) {  // lifted output: w grad l(z_L)
      live(z_out) = live(forward_.z[i]) + live(d);
      net.loss_gradient(live(z_out), y, live(out));
      live(out) *= weights.loss_weight;
    } else if (m + 1 == L && !weights.output_lifted) {  // under the true loss of f_L(a_L)
      Matrix<S>& a = work.above_residual;
      live(a) = live(forward_.a[i]) + live(e_above);
      net.layer(m).visit([&](const auto& pair) {
        activate<S>(pair, live(a), live(z_out));
        net.loss_gradient(live(z_out), y, live(work.output_gradient));
        vjp<S>(pair, live(a), live(work.output_gradient), live(work.output_signal));
      });
      maps_.transpose(net, m, live(work.output_signal), live(out), weights.loss_weight);
    } else {
      coupling_residual(net, m + 1, e_above, d_[i + 1], work.above_residual);
      maps_.transpose(net, m, live(work.above_residual), live(out), weights.lambda[i]);
    }
  }

  /// The scale block m's iterates round at (methods/stopping_rule.hpp): its displacement
  /// ||d_m||, and s_m ||z^0_m|| for the signal it is driven by, which is s_m = w / lambda_m times
  /// quantities of the size of z (the loss gradient p - y of a well-fitted sample cancels to
  /// rounding relative to its terms, not to itself). Needs displacement_norm_ of block m; for
  /// the active samples.
  RowVectorCRef<S> rounding_scale(Index m, const lifted_weights<S>& weights) {
    const auto i = std::size_t(m);
    live(rounding_) = displacement_rounding_scale(
        live(displacement_norm_), weights.loss_weight / weights.lambda[i - 1], live(base_[i]));
    return live(rounding_);
  }

  /// Sweeps a sample takes plain before it extrapolates, at the start and after a restart: a
  /// sample whose sweeps contract fast converges before it would overshoot (LPOM's fixed point
  /// on the paper's MLP took 36 sweeps plain, 128 extrapolating from the first sweep and 32
  /// with five plain ones, in double), and the stopping rule judges a restarted sample from
  /// plain steps (docs/methods.md §5.6b).
  static constexpr int plain_sweeps_after_restart = 5;

  /// Accelerated block coordinate descent: per sample, the next sweep starts from
  /// y = x_k + theta (x_k - x_{k-1}), x_k the state after this sweep, extrapolated in the
  /// preimages (z_m = f(a_m^0 + v_m) stays in the domain of G*), with
  /// theta = min(max_factor, (n - 1) / (n + 2)) after n + 5 sweeps since the sample's last
  /// restart (Nesterov's schedule, capped, after plain_sweeps_after_restart). A sample whose y
  /// would raise J above J(x_k), beyond the rounding of the change, starts from x_k instead and
  /// restarts, so J never increases from one sweep to the next. Keeps x_k in previous_* for the
  /// next sweep.
  template <class Program>
  void extrapolate(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                   S max_factor) {
    const Index top = top_block(weights), L = net.depth();
    for (Index j = 0; j < width_; ++j) {
      const S n = sweeps_since_restart_(j) - S(plain_sweeps_after_restart);
      factor_(j) = n <= 1 ? S(0) : std::min(max_factor, (n - 1) / (n + 2));
    }
    if ((live(factor_).array() == S(0)).all()) {  // every sample still sweeps plain
      remember_state(top, L);
      live(sweeps_since_restart_).array() += S(1);
      return;
    }
    // Each move is taken about x_k itself, d_y = d_x + f(u_x + w) - f(u_x) and
    // e_y = e_x + W (d_y - d_x) with w = theta (v_k - v_{k-1}), so that theta = 0 leaves the
    // state exactly as it is.
    for (Index m = 1; m <= top; ++m) {
      const auto i = std::size_t(m);
      live(blocks_[i - 1].preimage_move) =
          ((live(v_[i]) - live(previous_preimage_[i])).array().rowwise() * live(factor_).array())
              .matrix();
    }
    remember_state(top, L);
    for (Index m = 1; m <= top; ++m) {
      const auto i = std::size_t(m);
      block_work& work = blocks_[i - 1];
      live(work.shift) = live(forward_.a[i - 1]) + live(v_[i]);
      net.layer(m - 1).visit([&](const auto& pair) {
        difference<S>(pair, live(work.shift), live(work.preimage_move), live(work.move));
      });
      live(v_[i]) += live(work.preimage_move);
      live(d_[i]) += live(work.move);
      if (m < L) {
        maps_.linear(net, m, live(work.move), live(work.candidate_above));
        live(e_[i]) += live(work.candidate_above);
      }
    }
    change_of_objective(net, y, weights);
    const S unit = std::numeric_limits<S>::epsilon() / 2;
    for (Index j = 0; j < width_; ++j) {
      if (change_(j) <= displacement_rule<S>::roundoff_factor * unit * change_scale_(j)) {
        sweeps_since_restart_(j) += 1;
        continue;
      }
      sweeps_since_restart_(j) = 1;
      // Its next steps are plain sweeps' again, far shorter than the extrapolated ones before:
      // the stopping rule judges it from them alone.
      rule_.reopen(j);
      for (Index m = 1; m <= top; ++m) {
        const auto i = std::size_t(m);
        d_[i].col(j) = previous_[i].col(j);
        v_[i].col(j) = previous_preimage_[i].col(j);
        if (m < L) e_[i].col(j) = previous_above_[i].col(j);
      }
    }
  }

  /// Keeps the current state x_k (d, v and e of blocks 1..top) in previous_* for the next
  /// sweep: its step length, and the point an extrapolation moves from or reverts to.
  void remember_state(Index top, Index L) {
    for (Index m = 1; m <= top; ++m) {
      const auto i = std::size_t(m);
      live(previous_[i]) = live(d_[i]);
      live(previous_preimage_[i]) = live(v_[i]);
      if (m < L) live(previous_above_[i]) = live(e_[i]);
    }
  }

  /// change_ = J(current state) - J(previous_*) per sample, written in the displacements so
  /// that it keeps its digits when both states are close: with u = a^0 + v the preimage of z
  /// (z = f(u)), x the previous state and y the current one, layer k's coupling changes by
  /// ~~~{.unparsed}
  ///   E_k(y) - E_k(x) = D_G(u_x, u_y) + D_G(a_y, a_x) + <v_x - e_y, d_y - d_x> + <r_x, e_y - e_x>,
  /// ~~~
  /// r_x = f(a_x) - z_x (from G*(z_y) - G*(z_x) = D_G(u_x, u_y) + <u_x, d_y - d_x>, the Bregman
  /// duality of G and G*, and G(a_y) - G(a_x) = D_G(a_y, a_x) + <f(a_x), e_y - e_x>), and the
  /// loss by w [l(z_L^y) - l(z_L^x)], taken from the loss's change in z_L.
  template <class Program>
  void change_of_objective(const Program& net, const MatrixCRef<S>& y,
                           const lifted_weights<S>& weights) {
    const Index top = top_block(weights), L = net.depth();
    live(change_).setZero();
    live(change_scale_).setZero();
    // Adds the terms' sum to change_ and the sum of their magnitudes to change_scale_.
    const auto add = [this](S weight, const auto& terms) {
      live(change_) += weight * terms.colwise().sum();
      live(change_scale_) += weight * terms.cwiseAbs().colwise().sum();
    };
    for (Index k = 1; k <= top; ++k) {
      const auto i = std::size_t(k);
      const S lambda = weights.lambda[i - 1];
      block_work& work = blocks_[i - 1];
      live(work.shift) = live(forward_.a[i - 1]) + live(v_[i]);
      live(work.preimage_move) = live(previous_preimage_[i]) - live(v_[i]);
      net.layer(k - 1).visit([&](const auto& pair) {
        potential_divergence<S>(pair, live(work.shift), live(work.preimage_move), live(work.row));
      });
      add(lambda, live(work.row));
      live(work.move) = live(d_[i]) - live(previous_[i]);
      add(lambda, (live(previous_preimage_[i]) - live(e_[i - 1])).cwiseProduct(live(work.move)));
      if (k > 1) {  // a_1 = W_1 x + b_1 never moves
        live(work.shift) = live(forward_.a[i - 1]) + live(previous_above_[i - 1]);
        live(work.preimage_move) = live(e_[i - 1]) - live(previous_above_[i - 1]);
        net.layer(k - 1).visit([&](const auto& pair) {
          potential_divergence<S>(pair, live(work.shift), live(work.preimage_move),
                                  live(work.row));
        });
        add(lambda, live(work.row));
        coupling_residual(net, k, previous_above_[i - 1], previous_[i], work.candidate);
        add(lambda, live(work.candidate).cwiseProduct(live(work.preimage_move)));
      }
    }
    // The loss: at z_L = z_L^0 + d_L (lifted output) or f_L(a_L^0 + e_L), moved by the change
    // of z_L, both about the forward pass.
    block_work& output = blocks_[std::size_t(L - 1)];
    const auto top_layer = std::size_t(L);
    if (weights.output_lifted) {
      live(output.output) = live(forward_.z[top_layer]) + live(previous_[top_layer]);
      live(output.candidate) = live(d_[top_layer]) - live(previous_[top_layer]);
    } else {
      net.layer(L - 1).visit([&](const auto& pair) {
        difference<S>(pair, live(forward_.a[top_layer - 1]), live(previous_above_[top_layer - 1]),
                      live(output.output));
        difference<S>(pair, live(forward_.a[top_layer - 1]), live(e_[top_layer - 1]),
                      live(output.candidate));
      });
      live(output.candidate) -= live(output.output);
      live(output.output) += live(forward_.z[top_layer]);
    }
    net.loss_change(live(output.output), live(output.candidate), y, live(output.change));
    add(weights.loss_weight, live(output.change));
    // The loss's change rounds at the size of its terms, about ||h||_1 (<y, h> and the
    // softmax-weighted e^h - 1 of cross-entropy).
    live(change_scale_) +=
        weights.loss_weight * live(output.candidate).cwiseAbs().colwise().sum();
  }

  /// Up to `iterations` proximal-gradient steps on block m, stopping early where the stopping
  /// rule holds for the block (relative to its own displacement). Never increases J.
  template <class Program>
  void proximal_block(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                      Index m, Index iterations, S tolerance) {
    const auto i = std::size_t(m);
    block_work& work = blocks_[i - 1];
    feedback(net, y, weights, m, d_[i], above(m), work.feedback);
    block_rule_.start(1, width_, tolerance);
    for (Index t = 0; t < iterations; ++t) {
      const bool last = t + 1 == iterations;
      // No step passes where the block is at a minimiser up to rounding.
      if (!proximal_step(net, y, weights, m, nullptr, !last)) break;
      accept(m, work.candidate, work.candidate_above, last ? nullptr : &work.candidate_feedback,
             work.candidate_preimage, nullptr);
      live(step_norm_) = live(work.move).colwise().norm();
      live(displacement_norm_) = live(d_[i]).colwise().norm();
      block_rule_.observe(0, live(step_norm_), live(displacement_norm_),
                          rounding_scale(m, weights));
      if (block_rule_.end_iteration()) break;
    }
  }

  /// One proximal-gradient trial on block m from its current state (work.feedback = q_m):
  /// backtracks the block's step size t until 2 D_h(z+, z) <= ||z+ - z||^2 / t, D_h h_m's
  /// Bregman divergence h_m(z+) - h_m(z) - <q_m, z+ - z>, over the samples `columns` selects
  /// (all when null), which with the prox step's optimality keeps J from increasing (file
  /// comment; docs/methods.md §5.5). Below the loss the divergence needs a_{m+1} = W_{m+1} z+
  /// alone, so the feedback at z+ is computed only where `feedback_needed` (another update of
  /// the block follows) or the curvature test needs it. Leaves the candidate in
  /// work.candidate*, or in work.fallback* when `columns` is given (LPOM's safeguard). Returns
  /// false when no step passes (rounding dominates the move).
  template <class Program>
  bool proximal_step(const Program& net, const MatrixCRef<S>& y, const lifted_weights<S>& weights,
                     Index m, const std::vector<char>* columns, bool feedback_needed) {
    const auto i = std::size_t(m);
    const bool top = m == Index(e_.size());
    // The curvature test next to the loss, and above a pair whose G differences would round
    // (D_G from values of G cancels to rounding on tiny moves, and spurious refusals would
    // shrink the step until the stopping rule took the crawl for convergence).
    const bool curvature_test = next_to_loss(net, weights, m) || !exact_divergence(net, m);
    block_work& work = blocks_[i - 1];
    Matrix<S>& next = columns ? work.fallback : work.candidate;
    Matrix<S>& next_above = columns ? work.fallback_above : work.candidate_above;
    Matrix<S>& next_feedback = columns ? work.fallback_feedback : work.candidate_feedback;
    Matrix<S>& next_preimage = columns ? work.fallback_preimage : work.candidate_preimage;
    Matrix<S>& next_output = columns ? work.fallback_output : work.candidate_output;
    const S lambda = weights.lambda[i - 1];
    S& step = step_size(m, weights);
    for (int halving = 0; halving < 60; ++halving) {
      const S c = step * lambda;
      live(work.shift) = live(d_[i]) + c * live(e_[i - 1]) - step * live(work.feedback);
      net.layer(m - 1).visit([&](const auto& pair) {
        prox_conj_displacement<S>(pair, live(forward_.a[i - 1]), live(work.shift), c, live(next));
      });
      live(next_preimage) = (live(work.shift) - live(next)) / c;  // c w + f(a + w) - f(a) = rho
      live(work.move) = live(next) - live(d_[i]);
      if (!top) maps_.linear(net, m, live(next), live(next_above));
      if (feedback_needed || curvature_test)
        feedback(net, y, weights, m, next, top ? next : next_above, next_feedback, &next_output);
      if (!curvature_test)
        upstairs_divergence(net, y, weights, m, next_above, next_output, work.change);
      S measured = 0, squared = 0;
      for (Index j = 0; j < width_; ++j) {
        if (columns && !(*columns)[std::size_t(j)]) continue;
        measured += curvature_test
                        ? (next_feedback.col(j) - work.feedback.col(j)).dot(work.move.col(j))
                        : S(2) * work.change(j);
        squared += work.move.col(j).squaredNorm();
      }
      if (measured <= squared / step) {
        step = grown_step(step, squared, measured);
        return squared > 0;
      }
      step /= 2;
    }
    return false;
  }

  /// D_h(z+, z) per sample for block m's move work.move to z+ (h_m the terms of the layers
  /// above it, file comment): lambda_{m+1} D_{G_{m+1}}(a_{m+1}^+, a_{m+1}) about
  /// a_{m+1} = a_{m+1}^0 + e_{m+1}, with `next_above` = e_{m+1}^+; next to the loss,
  /// w [l(z+) - l(z) - <grad l(z), z+ - z>] for a lifted output (work.feedback = w grad l) and
  /// w [L(a+) - L(a) - <delta_L, a+ - a>] with L = l o f_L under an unlifted one, where
  /// <w delta_L, W_L (z+ - z)> = <q_m, z+ - z>, from the outputs `next_output` and
  /// work.state_output. The loss's change is taken in its increment, which keeps its digits
  /// where z+ is close to z (a difference of two loss values rounds at the loss's size).
  template <class Program>
  void upstairs_divergence(const Program& net, const MatrixCRef<S>& y,
                           const lifted_weights<S>& weights, Index m, const Matrix<S>& next_above,
                           const Matrix<S>& next_output, RowVector<S>& out) {
    const auto i = std::size_t(m);
    block_work& work = blocks_[i - 1];
    if (next_to_loss(net, weights, m)) {
      live(work.output) = live(next_output) - live(work.state_output);
      net.loss_change(live(work.state_output), live(work.output), y, live(out));
      live(out) = weights.loss_weight * live(out) -
                  live(work.feedback).cwiseProduct(live(work.move)).colwise().sum();
      return;
    }
    live(work.above_move) = live(next_above) - live(e_[i]);
    live(work.above_base) = live(forward_.a[i]) + live(e_[i]);
    net.layer(m).visit([&](const auto& pair) {
      potential_divergence<S>(pair, live(work.above_base), live(work.above_move), live(out));
    });
    live(out) *= weights.lambda[i];
  }

  /// Whether layer m + 1's pair (index m) takes D_G in a closed form that keeps its digits on
  /// tiny moves (the identity, ReLU, leaky ReLU, the hard pairs), not from values of G.
  template <class Program>
  static bool exact_divergence(const Program& net, Index m) {
    bool exact = false;
    net.layer(m).visit([&](const auto& pair) {
      using P = std::decay_t<decltype(pair)>;
      exact = linear_pair<P> || has_scalar_divergence<P, S> || has_divergence_expr<P, S>;
    });
    return exact;
  }

  /// Whether the loss is the next term above block m: m = L (lifted output) or m = L - 1 under
  /// an unlifted output; its divergence is then taken from the outputs z_L.
  template <class Program>
  static bool next_to_loss(const Program& net, const lifted_weights<S>& weights, Index m) {
    return m == net.depth() || (m + 1 == net.depth() && !weights.output_lifted);
  }

  /// Takes block m's candidate as its state (all active samples, or where `columns` says so).
  /// Copies, not swaps: the retired samples' state stays where it is. Without `next_feedback`
  /// (the block's last update), work.feedback is left as it was: the next sweep computes it
  /// anew.
  void accept(Index m, const Matrix<S>& next, const Matrix<S>& next_above,
              const Matrix<S>* next_feedback, const Matrix<S>& next_preimage,
              const std::vector<char>* columns) {
    const auto i = std::size_t(m);
    const bool top = m == Index(e_.size());
    block_work& work = blocks_[i - 1];
    if (!columns) {
      live(d_[i]) = live(next);
      live(v_[i]) = live(next_preimage);
      if (next_feedback) live(work.feedback) = live(*next_feedback);
      if (!top) live(e_[i]) = live(next_above);
      return;
    }
    for (Index j = 0; j < width_; ++j) {
      if (!(*columns)[std::size_t(j)]) continue;
      d_[i].col(j) = next.col(j);
      v_[i].col(j) = next_preimage.col(j);
      if (next_feedback) work.feedback.col(j) = next_feedback->col(j);
      if (!top) e_[i].col(j) = next_above.col(j);
    }
  }

  /// Up to `iterations` of LPOM's fixed-point update on block m, per sample safeguarded by the
  /// exact change of J (file comment); stops early where the stopping rule holds for the block.
  template <class Program>
  void fixed_point_block(const Program& net, const MatrixCRef<S>& y,
                         const lifted_weights<S>& weights, Index m, Index iterations, S tolerance) {
    const auto i = std::size_t(m);
    const Index L = net.depth(), B = width_;
    const bool top = m == L;
    const bool loss_next = next_to_loss(net, weights, m);
    block_work& work = blocks_[i - 1];
    const S lambda = weights.lambda[i - 1];
    feedback(net, y, weights, m, d_[i], above(m), work.feedback,
             loss_next ? &work.state_output : nullptr);
    block_rule_.start(1, B, tolerance);
    for (Index t = 0; t < iterations; ++t) {
      live(work.before) = live(d_[i]);
      // The candidate z_m = f(a_m - q_m / lambda_m), u = a_m^0 + v.
      live(work.candidate_preimage) = live(e_[i - 1]) - live(work.feedback) / lambda;
      net.layer(m - 1).visit([&](const auto& pair) {
        difference<S>(pair, live(forward_.a[i - 1]), live(work.candidate_preimage),
                      live(work.candidate));
      });
      if (!top) maps_.linear(net, m, live(work.candidate), live(work.candidate_above));
      // The candidate's feedback q_m is the next update's; the block's last update needs it
      // only where the loss is next (for the output z_L its change of J is taken at). Below
      // the top, J's change needs a_{m+1} alone, so that update saves a product.
      const bool last = t + 1 == iterations;
      if (!last || loss_next)
        feedback(net, y, weights, m, work.candidate, top ? work.candidate : work.candidate_above,
                 work.candidate_feedback, loss_next ? &work.candidate_output : nullptr);
      const Matrix<S>* candidate_feedback = last ? nullptr : &work.candidate_feedback;
      // J(z+) - J(z) per sample: the divergence upstairs minus lambda_m D_{G_m}(u+, u).
      live(work.preimage_move) = live(work.candidate_preimage) - live(v_[i]);
      live(work.shift) = live(forward_.a[i - 1]) + live(v_[i]);  // u, with z_m = f(u)
      net.layer(m - 1).visit([&](const auto& pair) {
        potential_divergence<S>(pair, live(work.shift), live(work.preimage_move), live(work.row));
      });
      live(work.move) = live(work.candidate) - live(d_[i]);
      upstairs_divergence(net, y, weights, m, work.candidate_above, work.candidate_output,
                          work.change);
      live(work.change) -= lambda * live(work.row);
      Index rejected = 0;
      for (Index j = 0; j < B; ++j) {
        const bool keep = work.change(j) <= 0;
        work.accepted[std::size_t(j)] = char(keep);
        rejected += !keep;
      }
      fixed_point_updates_ += B;
      safeguarded_ += rejected;
      accept(m, work.candidate, work.candidate_above, candidate_feedback, work.candidate_preimage,
             &work.accepted);
      if (loss_next) copy_columns(work.candidate_output, work.state_output, work.accepted);
      if (rejected > 0) {
        for (Index j = 0; j < B; ++j) work.accepted[std::size_t(j)] ^= 1;
        if (proximal_step(net, y, weights, m, &work.accepted, !last)) {
          accept(m, work.fallback, work.fallback_above, last ? nullptr : &work.fallback_feedback,
                 work.fallback_preimage, &work.accepted);
          if (loss_next) copy_columns(work.fallback_output, work.state_output, work.accepted);
        }
      }
      live(step_norm_) = (live(d_[i]) - live(work.before)).colwise().norm();
      live(displacement_norm_) = live(d_[i]).colwise().norm();
      block_rule_.observe(0, live(step_norm_), live(displacement_norm_),
                          rounding_scale(m, weights));
      if (block_rule_.end_iteration()) break;
    }
  }

  void copy_columns(const Matrix<S>& from, Matrix<S>& to, const std::vector<char>& columns) const {
    for (Index j = 0; j < width_; ++j)
      if (columns[std::size_t(j)]) to.col(j) = from.col(j);
  }

  /// The leading width_ samples of a per-sample buffer: all of them, except during a solve
  /// that has retired some (solve()).
  template <class Buffer> auto live(Buffer& buffer) const { return active_columns(buffer, width_); }

  /// Exchanges samples p and q in every per-sample buffer a solve reads, and in order_.
  void swap_samples(Index p, Index q) {
    order_.swap(p, q);
    for (std::size_t k = 0; k < e_.size(); ++k) {
      for (Matrix<S>* m : {&forward_.a[k], &forward_.z[k + 1], &d_[k + 1], &v_[k + 1], &e_[k],
                           &previous_[k + 1], &previous_preimage_[k + 1]})
        m->col(p).swap(m->col(q));
      if (Matrix<S>& above = previous_above_[k + 1]; above.cols() > 0)
        above.col(p).swap(above.col(q));
      std::swap(base_[k + 1](p), base_[k + 1](q));
    }
    std::swap(sweeps_since_restart_(p), sweeps_since_restart_(q));
  }


  /// The first-order start of §5.6b, bottom up, from BP's errors g_k at z_k.
  template <class Program>
  void first_order_start(const Program& net, const MatrixCRef<S>& y,
                         const lifted_weights<S>& weights) {
    const Index L = net.depth(), top = top_block(weights);
    // BP's errors, top down: g_L = grad l(z_L), g_{k-1} = W_k^T J_{f_k}(a_k)^T g_k; stored in
    // each block's candidate buffer (free until the solve starts).
    Matrix<S>& g_top = blocks_[std::size_t(L - 1)].candidate;
    net.loss_gradient(forward_.z.back(), y, g_top);
    for (Index k = L; k > 1; --k) {
      const auto i = std::size_t(k);
      Matrix<S>& signal = blocks_[i - 1].shift;
      net.layer(k - 1).visit([&](const auto& pair) {
        vjp<S>(pair, forward_.a[i - 1], blocks_[i - 1].candidate, signal);
      });
      net.transpose(k - 1, signal, blocks_[i - 2].candidate);
    }
    for (Index k = 1; k <= top; ++k) {
      const auto i = std::size_t(k);
      const S spacing = weights.loss_weight / weights.lambda[i - 1];
      v_[i] = e_[i - 1] - spacing * blocks_[i - 1].candidate;
      net.layer(k - 1).visit([&](const auto& pair) {
        difference<S>(pair, forward_.a[i - 1], v_[i], d_[i]);
      });
      if (k < L) net.linear(k, d_[i], e_[i]);
    }
  }

  /// z = z^0 + d and a = a^0 + e (the state in the usual form, for values, gradients and
  /// W-steps); an unlifted output's displacement d_L = f_L(a_L^0 + e_L) - f_L(a_L^0) first.
  template <class Program>
  void materialize(const Program& net) {
    const std::size_t L = e_.size();
    if (!output_lifted_) {
      net.layer(Index(L) - 1).visit([&](const auto& pair) {
        difference<S>(pair, forward_.a[L - 1], e_[L - 1], d_[L]);
      });
    }
    for (std::size_t k = 0; k < L; ++k) {
      a_[k] = forward_.a[k] + e_[k];
      z_[k + 1] = forward_.z[k + 1] + d_[k + 1];
    }
  }

  /// A per-block step size, kept across calls (starts at 1 / lambda of the block's coupling).
  S& step_size(Index m, const lifted_weights<S>& weights) {
    if (steps_.size() != d_.size()) steps_.assign(d_.size(), S(0));
    S& step = steps_[std::size_t(m)];
    if (!(step > 0)) step = S(1) / std::max(weights.lambda[std::size_t(m - 1)], S(1));
    return step;
  }

  forward_state<S> forward_;
  packed_maps<S> maps_;  ///< the weights' maps, packed during a solve
  std::vector<Matrix<S>> d_, v_, e_, z_, a_;
  /// The state after the last sweep, x_k (d, v and e of each block): what the next sweep's step
  /// is measured from, and what a sample falls back to when its extrapolation is refused.
  std::vector<Matrix<S>> previous_, previous_preimage_, previous_above_;
  RowVector<S> sweeps_since_restart_, factor_, change_, change_scale_;
  std::vector<S> steps_, weight_steps_;
  std::vector<block_work> blocks_;
  std::vector<weight_work> layers_;
  RowVector<S> total_, step_norm_, displacement_norm_, rounding_;
  std::vector<RowVector<S>> base_;  ///< ||z^0_m|| per sample, per block
  /// The samples a solve still iterates on are the first width_ columns, in order_.
  Index width_ = 0;
  sample_order<S> order_;
  displacement_rule<S> rule_, block_rule_;
  Index safeguarded_ = 0, fixed_point_updates_ = 0;
  bool output_lifted_ = true;
};

}  // namespace bilevel::detail
