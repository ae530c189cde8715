#pragma once
/// \file
/// Gradients of a general bilevel problem (docs/methods.md §4, §5.7):
///
/// ~~~{.unparsed}
///   min_theta l(z*(theta)),   z*(theta) = argmin_z E(z, theta).
/// ~~~
///
/// * contrastive_gradient: the contrastive surrogate with spacing beta > 0,
///   ~~~{.unparsed}
///     L_beta(theta) = 1/beta [ min_z (beta l(z) + E(z, theta)) - min_z E(z, theta) ],
///     dL_beta/dtheta = 1/beta [ d_theta E(z^beta, theta) - d_theta E(z^0, theta) ],
///   ~~~
///   its symmetric variant (d_theta E(z^beta) - d_theta E(z^-beta)) / (2 beta), and the linearised
///   surrogate (l replaced by l(z^0) + <grad l(z^0), z - z^0>, with grad l(z^0) held fixed).
/// * implicit_gradient: dl/dtheta = -(d2E/dz dtheta)^T v with (d2E/dz2) v = grad l(z*), v by
///   conjugate gradients on Hessian-vector products.
///
/// The problem is a plain struct (no base class) checked by the concept InnerProblem; the loss
/// by BilevelLoss. All members are const; `out` arguments arrive sized and may be assigned to.
///
/// ~~~{.unparsed}
///   struct my_problem {                                   // required (InnerProblem<P, S>)
///     S    energy(const Vector<S>& z, const Vector<S>& theta) const;
///     void gradient_z(const Vector<S>& z, const Vector<S>& theta, Vector<S>& out) const;
///     void gradient_theta(const Vector<S>& z, const Vector<S>& theta, Vector<S>& out) const;
///
///     // optional: sizes, used to check z_start and theta (shape_error on mismatch) and to
///     // start from z = 0 when settings.z_start is empty
///     Index z_size() const;   Index theta_size() const;
///
///     // optional inner solvers; z holds the starting point on entry and the minimiser on exit:
///     //   z <- argmin_z E(z, theta) + <linear_term, z>    (free and linearised problems)
///     void solve(const Vector<S>& theta, const Vector<S>& linear_term, Vector<S>& z) const;
///     //   z <- argmin_z weight * l(z) + E(z, theta), for the loss type L it accepts (weight may
///     //   be 0 for the free problem, or -beta for the symmetric variant)
///     void solve(const Vector<S>& theta, const L& loss, S weight, Vector<S>& z) const;
///
///     // optional second derivatives (otherwise central differences of the gradients):
///     void hvp_zz(z, theta, v, out) const;        // out = (d2E/dz2) v            (size of z)
///     void hvp_theta_z(z, theta, v, out) const;   // out = (d2E/dtheta dz) v      (size of theta)
///   };
///
///   struct my_loss {                                      // BilevelLoss<L, S>
///     S    value(const Vector<S>& z) const;
///     void gradient(const Vector<S>& z, Vector<S>& out) const;
///   };
/// ~~~
///
/// Which solver runs: the free problem uses solve(theta, 0, z) if present, else
/// solve(theta, loss, 0, z) if present; the clamped problem solve(theta, loss, +-beta, z); the
/// linearised clamped problem solve(theta, +-beta grad l(z^0), z). Whatever is missing is done
/// by the library's gradient descent with Armijo backtracking (descent_settings), from
/// settings.z_start for the free problem and from z^0 for the clamped ones. Every solve is
/// reported with the gradient norm of its objective at the returned point, so a user sees
/// whether the inner problems were solved (also for the problem's own solvers).
///
/// Finite-difference fallbacks (no hvp_zz / hvp_theta_z): with u = v / ||v|| and
/// h = fd_step * max(1, ||z||_inf),
/// ~~~{.unparsed}
///   (d2E/dz2) v        ~ ||v|| (grad_z E(z + h u) - grad_z E(z - h u)) / (2 h),
///   (d2E/dtheta dz) v  ~ ||v|| (grad_theta E(z + h u) - grad_theta E(z - h u)) / (2 h),
/// ~~~
/// with error O(h^2) + O(eps / h); the default fd_step = eps^(1/3) (about 6e-6 in double)
/// balances the two. Exact up to rounding when E is quadratic in z.
///
/// Papers: C. Zach, arXiv:2105.07231 (2021) (contrastive surrogates, §4); N. Zucchet,
/// J. Sacramento, Neural Computation 34(12), 2022, arXiv:2205.03076 (implicit differentiation).

#include <algorithm>
#include <cmath>
#include <concepts>
#include <limits>
#include <string_view>
#include <type_traits>

#include "../core/error.hpp"
#include "../core/finite.hpp"
#include "../core/types.hpp"

namespace bilevel {

/// An inner problem E(z, theta) for scalar type S. If this fails for your struct, the compiler
/// names the first missing member: energy(z, theta) -> S, gradient_z(z, theta, out) and
/// gradient_theta(z, theta, out), all const, with z, theta, out of type `Vector<S>`.
template <class P, class S>
concept InnerProblem =
    Scalar<S> && requires(const P& problem, const Vector<S>& z, const Vector<S>& theta,
                          Vector<S>& out) {
      { problem.energy(z, theta) } -> std::convertible_to<S>;
      problem.gradient_z(z, theta, out);
      problem.gradient_theta(z, theta, out);
    };

/// An outer loss l(z): value(z) -> S and gradient(z, out), both const.
template <class L, class S>
concept BilevelLoss = Scalar<S> && requires(const L& loss, const Vector<S>& z, Vector<S>& out) {
  { loss.value(z) } -> std::convertible_to<S>;
  loss.gradient(z, out);
};

/// What the optional members of an inner problem are (see the top of this file).
template <class P, class S>
concept HasLinearTermSolver =
    requires(const P& problem, const Vector<S>& theta, const Vector<S>& linear_term, Vector<S>& z) {
      problem.solve(theta, linear_term, z);
    };
template <class P, class L, class S>
concept HasClampedSolver =
    requires(const P& problem, const Vector<S>& theta, const L& loss, S weight, Vector<S>& z) {
      problem.solve(theta, loss, weight, z);
    };
template <class P, class S>
concept HasHessianVectorProduct = requires(const P& problem, const Vector<S>& z,
                                           const Vector<S>& theta, Vector<S>& out) {
  problem.hvp_zz(z, theta, z, out);
};
template <class P, class S>
concept HasMixedHessianVectorProduct = requires(const P& problem, const Vector<S>& z,
                                                const Vector<S>& theta, Vector<S>& out) {
  problem.hvp_theta_z(z, theta, z, out);
};

/// The library's inner solver: gradient descent with Armijo backtracking, stopped when the
/// gradient norm of the objective is <= tolerance (absolute) or after max_iterations steps.
/// A step t is accepted when F(z - t g) <= F(z) - armijo t ||g||^2. Where the change of F is
/// below its rounding (about 1000 eps times the size of its terms), the slope test
/// g(z - t g).g >= (2 armijo - 1) ||g||^2 replaces it (the approximate Armijo condition of Hager
/// and Zhang; the same test for a quadratic), so tolerances near machine precision are reached.
/// Each accepted step multiplies the next trial step by `grow`.
struct descent_settings {
  Index max_iterations = 20000;
  double tolerance = 1e-10;  ///< on ||grad_z F||, absolute
  double initial_step = 1;
  double armijo = 1e-4;  ///< sufficient-decrease constant, in (0, 1/2)
  double shrink = 0.5;   ///< backtracking factor, in (0, 1)
  double grow = 2;       ///< next trial step after an accepted one, >= 1
  Index max_backtracks = 60;
};

/// Conjugate gradients for (d2E/dz2) v = grad l(z*), started at v = 0, stopped when
/// ||r|| <= tolerance ||grad l|| for its recursive residual r or after max_iterations (H must be
/// positive definite along the search directions; otherwise it stops and reports not converged).
struct cg_settings {
  Index max_iterations = 1000;
  double tolerance = 1e-12;
};

/// Settings of contrastive_gradient and implicit_gradient.
template <Scalar S>
struct surrogate_settings {
  /// Starting point of the inner solves (also handed to the problem's own solver). May be empty
  /// if the problem declares z_size(), in which case z = 0 is used.
  Vector<S> z_start;
  descent_settings inner;
  cg_settings cg;
  /// contrastive_gradient: use the linearised surrogate (clamped problem
  /// argmin_z beta <grad l(z^0), z> + E(z, theta)).
  bool linearised = false;
  /// Relative step of the finite-difference Hessian-vector products (see the top of the file).
  double fd_step = std::cbrt(double(std::numeric_limits<S>::epsilon()));
};

/// How one inner solve ended.
struct inner_solve_report {
  double residual = std::numeric_limits<double>::quiet_NaN();  ///< ||grad_z objective|| at z
  Index iterations = 0;         ///< descent iterations; 0 when the problem's own solver ran
  bool converged = false;       ///< residual <= settings.inner.tolerance
  bool problem_solver = false;  ///< the problem's own solve() was used
};

/// What contrastive_gradient returns: dL_beta/dtheta, L_beta, the inner solutions, their reports.
template <Scalar S>
struct contrastive_result {
  Vector<S> gradient;  ///< dL_beta/dtheta (one-sided, symmetric or linearised)
  /// L_beta: one-sided 1/beta [min clamped - min free]; symmetric
  /// 1/(2 beta) [min_z (beta l + E) - min_z (-beta l + E)]; linearised: the same with l replaced
  /// by its Taylor expansion l(z^0) + <grad l(z^0), z - z^0> (so L_beta -> l(z^0) as beta -> 0).
  S surrogate = 0;
  S loss_free = 0;       ///< l(z^0)
  Vector<S> z_free;      ///< z^0 = argmin_z E
  Vector<S> z_clamped;   ///< z^beta
  Vector<S> z_negative;  ///< z^-beta (symmetric variant only; else empty)
  inner_solve_report free, clamped, negative;
  bool converged() const {
    return free.converged && clamped.converged && (z_negative.size() == 0 || negative.converged);
  }
};

/// What implicit_gradient returns: dl/dtheta, l(z*), z*, the adjoint v and the inner report.
template <Scalar S>
struct implicit_result {
  Vector<S> gradient;  ///< dl/dtheta = -(d2E/dz dtheta)^T v
  S loss = 0;          ///< l(z*)
  Vector<S> z;         ///< z* = argmin_z E
  Vector<S> adjoint;   ///< v, solving (d2E/dz2) v = grad l(z*)
  inner_solve_report inner;
  double cg_residual = std::numeric_limits<double>::quiet_NaN();  ///< ||H v - g|| / ||g||
  Index cg_iterations = 0;
  bool cg_converged = false;
  bool converged() const { return inner.converged && cg_converged; }
};

namespace detail::surrogate {

template <class P>
concept declares_z_size = requires(const P& problem) {
  { problem.z_size() } -> std::convertible_to<Index>;
};
template <class P>
concept declares_theta_size = requires(const P& problem) {
  { problem.theta_size() } -> std::convertible_to<Index>;
};

template <Scalar S>
void require_finite(const Vector<S>& v, std::string_view function, std::string_view what) {
  if (!all_finite(v)) throw numeric_error(concat(function, ": ", what, " must be finite"));
}

template <Scalar S>
void validate_settings(const surrogate_settings<S>& s, std::string_view function) {
  const descent_settings& d = s.inner;
  require(d.max_iterations >= 0, function, "settings.inner.max_iterations", ">= 0",
          d.max_iterations);
  require(d.tolerance >= 0, function, "settings.inner.tolerance", ">= 0", d.tolerance);
  require(d.initial_step > 0 && std::isfinite(d.initial_step), function,
          "settings.inner.initial_step", "> 0 and finite", d.initial_step);
  require(d.armijo > 0 && d.armijo < 0.5, function, "settings.inner.armijo", "in (0, 1/2)",
          d.armijo);
  require(d.shrink > 0 && d.shrink < 1, function, "settings.inner.shrink", "in (0, 1)", d.shrink);
  require(d.grow >= 1 && std::isfinite(d.grow), function, "settings.inner.grow",
          ">= 1 and finite", d.grow);
  require(d.max_backtracks >= 0, function, "settings.inner.max_backtracks", ">= 0",
          d.max_backtracks);
  require(s.cg.max_iterations >= 0, function, "settings.cg.max_iterations", ">= 0",
          s.cg.max_iterations);
  require(s.cg.tolerance >= 0, function, "settings.cg.tolerance", ">= 0", s.cg.tolerance);
  require(s.fd_step > 0 && std::isfinite(s.fd_step), function, "settings.fd_step",
          "> 0 and finite", s.fd_step);
}

/// Checks theta and the start point; returns the start point (z_start, or zeros of z_size()).
template <class P, Scalar S>
Vector<S> checked_start(const P& problem, const Vector<S>& theta,
                        const surrogate_settings<S>& settings, std::string_view function) {
  validate_settings(settings, function);
  if constexpr (declares_theta_size<P>) {
    require_shape(function, "theta", Index(problem.theta_size()), 1, theta.rows(), theta.cols());
  }
  require_finite(theta, function, "theta");
  Vector<S> start = settings.z_start;
  if constexpr (declares_z_size<P>) {
    const Index n = Index(problem.z_size());
    if (start.size() == 0) start = Vector<S>::Zero(n);
    require_shape(function, "settings.z_start", n, 1, start.rows(), start.cols());
  }
  require(start.size() > 0, function, "settings.z_start",
          "a non-empty starting point (or the problem must declare z_size())", "empty");
  require_finite(start, function, "settings.z_start");
  return start;
}

// Calls into the user's structs, with the sizes of what they return checked.

template <class P, Scalar S>
void call_gradient_z(const P& problem, const Vector<S>& z, const Vector<S>& theta, Vector<S>& out,
                     std::string_view function) {
  out.resize(z.size());
  problem.gradient_z(z, theta, out);
  require_shape(function, "the problem's gradient_z", z.size(), 1, out.rows(), out.cols());
}

template <class P, Scalar S>
void call_gradient_theta(const P& problem, const Vector<S>& z, const Vector<S>& theta,
                         Vector<S>& out, std::string_view function) {
  out.resize(theta.size());
  problem.gradient_theta(z, theta, out);
  require_shape(function, "the problem's gradient_theta", theta.size(), 1, out.rows(), out.cols());
}

template <class L, Scalar S>
void call_loss_gradient(const L& loss, const Vector<S>& z, Vector<S>& out,
                        std::string_view function) {
  out.resize(z.size());
  loss.gradient(z, out);
  require_shape(function, "the loss gradient", z.size(), 1, out.rows(), out.cols());
}

/// F(z) = E(z, theta) + weight l(z) + <linear, z> (linear == nullptr: no linear term).
template <class P, class L, Scalar S>
struct inner_objective {
  const P& problem;
  const L& loss;
  const Vector<S>& theta;
  S weight;
  const Vector<S>* linear;
  std::string_view function;

  /// The value, and in `magnitude` the size of its terms (for the rounding allowance).
  S value(const Vector<S>& z, S& magnitude) const {
    const S energy = S(problem.energy(z, theta));
    S total = energy;
    magnitude = std::abs(energy);
    if (weight != 0) {
      const S term = weight * S(loss.value(z));
      total += term;
      magnitude += std::abs(term);
    }
    if (linear != nullptr) {
      total += linear->dot(z);
      magnitude += linear->cwiseAbs().dot(z.cwiseAbs());
    }
    return total;
  }

  void gradient(const Vector<S>& z, Vector<S>& out, Vector<S>& scratch) const {
    call_gradient_z(problem, z, theta, out, function);
    if (weight != 0) {
      call_loss_gradient(loss, z, scratch, function);
      out += weight * scratch;
    }
    if (linear != nullptr) out += *linear;
  }
};

/// Gradient descent with (approximate) Armijo backtracking; z is the start on entry.
template <class Objective, Scalar S>
inner_solve_report descend(const Objective& objective, Vector<S>& z,
                           const descent_settings& settings) {
  inner_solve_report report;
  Vector<S> g, g_trial, z_trial, scratch;
  S magnitude = 0, trial_magnitude = 0;
  S f = objective.value(z, magnitude);
  if (!std::isfinite(f)) {
    throw numeric_error(concat(objective.function, ": the inner objective is ", f,
                               " at the starting point"));
  }
  objective.gradient(z, g, scratch);
  double norm = double(g.norm());
  double step = settings.initial_step;
  const S rounding = S(1000) * std::numeric_limits<S>::epsilon();
  Index iteration = 0;
  while (norm > settings.tolerance && iteration < settings.max_iterations) {
    const S squared = g.squaredNorm();
    bool accepted = false, have_gradient = false;
    S f_trial = 0;
    for (Index b = 0; b <= settings.max_backtracks && !accepted; ++b, step *= settings.shrink) {
      z_trial = z - S(step) * g;
      f_trial = objective.value(z_trial, trial_magnitude);
      if (!std::isfinite(f_trial)) continue;
      const S change = f_trial - f, noise = rounding * std::max(magnitude, trial_magnitude);
      if (change < -noise) {
        accepted = change <= -S(settings.armijo * step) * squared;
      } else if (change <= noise) {
        // The change is below what F resolves: test the slope along the step instead.
        objective.gradient(z_trial, g_trial, scratch);
        have_gradient = accepted = g_trial.dot(g) >= S(2 * settings.armijo - 1) * squared;
      }
      if (accepted) break;
    }
    if (!accepted) break;  // stalled: reported as not converged
    z.swap(z_trial);
    f = f_trial;
    magnitude = trial_magnitude;
    if (have_gradient) {
      g.swap(g_trial);
    } else {
      objective.gradient(z, g, scratch);
    }
    norm = double(g.norm());
    step *= settings.grow;
    ++iteration;
  }
  if (!all_finite(z) || !std::isfinite(norm)) {
    throw numeric_error(concat(objective.function, ": the inner descent produced non-finite values"));
  }
  report.iterations = iteration;
  report.residual = norm;
  report.converged = norm <= settings.tolerance;
  return report;
}

/// Report of a problem-supplied solve: the objective's gradient norm at its answer.
template <class Objective, Scalar S>
inner_solve_report user_solve_report(const Objective& objective, const Vector<S>& z, Index n,
                                     const descent_settings& settings) {
  require_shape(objective.function, "z returned by the problem's solve", n, 1, z.rows(), z.cols());
  require_finite(z, objective.function, "z returned by the problem's solve");
  Vector<S> g, scratch;
  objective.gradient(z, g, scratch);
  inner_solve_report report;
  report.residual = double(g.norm());
  report.iterations = 0;
  report.converged = report.residual <= settings.tolerance;
  report.problem_solver = true;
  return report;
}

/// argmin_z weight l(z) + <linear, z> + E(z, theta), by the problem's solver where it has a
/// suitable one, else by descent from z (z holds the start on entry). weight and linear are
/// never both set.
template <class P, class L, Scalar S>
inner_solve_report solve_inner(const P& problem, const L& loss, const Vector<S>& theta, S weight,
                               const Vector<S>* linear, Vector<S>& z,
                               const descent_settings& settings, std::string_view function) {
  const inner_objective<P, L, S> objective{problem, loss, theta, weight, linear, function};
  const Index n = z.size();
  if (weight == 0) {
    if constexpr (HasLinearTermSolver<P, S>) {
      if (linear != nullptr) {
        problem.solve(theta, *linear, z);
      } else {
        const Vector<S> zero = Vector<S>::Zero(n);
        problem.solve(theta, zero, z);
      }
      return user_solve_report(objective, z, n, settings);
    } else if constexpr (HasClampedSolver<P, L, S>) {
      if (linear == nullptr) {
        problem.solve(theta, loss, S(0), z);
        return user_solve_report(objective, z, n, settings);
      }
    }
  } else if constexpr (HasClampedSolver<P, L, S>) {
    problem.solve(theta, loss, weight, z);
    return user_solve_report(objective, z, n, settings);
  }
  return descend(objective, z, settings);
}

/// ||v|| (grad(z + h u) - grad(z - h u)) / (2 h), u = v / ||v||, h = fd_step max(1, ||z||_inf).
template <Scalar S, class Gradient>
void central_difference(Gradient&& gradient, const Vector<S>& z, const Vector<S>& v,
                        double fd_step, Index out_size, Vector<S>& out) {
  const S norm = v.norm();
  if (norm == 0) {
    out = Vector<S>::Zero(out_size);
    return;
  }
  const S h = S(fd_step) * std::max(S(1), z.template lpNorm<Eigen::Infinity>());
  const Vector<S> shift = (h / norm) * v;
  Vector<S> plus, minus;
  gradient(Vector<S>(z + shift), plus);
  gradient(Vector<S>(z - shift), minus);
  out = (plus - minus) * (norm / (2 * h));
}

template <class P, Scalar S>
void hessian_zz(const P& problem, const Vector<S>& z, const Vector<S>& theta, const Vector<S>& v,
                double fd_step, Vector<S>& out, std::string_view function) {
  if constexpr (HasHessianVectorProduct<P, S>) {
    out.resize(z.size());
    problem.hvp_zz(z, theta, v, out);
  } else {
    central_difference<S>(
        [&](const Vector<S>& point, Vector<S>& g) {
          call_gradient_z(problem, point, theta, g, function);
        },
        z, v, fd_step, z.size(), out);
  }
  require_shape(function, "the problem's hvp_zz", z.size(), 1, out.rows(), out.cols());
}

template <class P, Scalar S>
void hessian_theta_z(const P& problem, const Vector<S>& z, const Vector<S>& theta,
                     const Vector<S>& v, double fd_step, Vector<S>& out,
                     std::string_view function) {
  if constexpr (HasMixedHessianVectorProduct<P, S>) {
    out.resize(theta.size());
    problem.hvp_theta_z(z, theta, v, out);
  } else {
    central_difference<S>(
        [&](const Vector<S>& point, Vector<S>& g) {
          call_gradient_theta(problem, point, theta, g, function);
        },
        z, v, fd_step, theta.size(), out);
  }
  require_shape(function, "the problem's hvp_theta_z", theta.size(), 1, out.rows(), out.cols());
}

}  // namespace detail::surrogate

/// The contrastive surrogate's value and gradient at spacing beta > 0 (docs/methods.md §4): one-sided
/// by default, symmetric (z^beta against z^-beta) if `symmetric`, with the linearised loss if
/// settings.linearised. Throws config_error for beta <= 0 or bad settings, shape_error when a
/// size does not fit, numeric_error for non-finite inputs or solver output.
template <class P, class L, Scalar S>
  requires InnerProblem<P, S> && BilevelLoss<L, S>
contrastive_result<S> contrastive_gradient(const P& problem, const L& loss, const Vector<S>& theta,
                                           std::type_identity_t<S> beta,
                                           const surrogate_settings<S>& settings,
                                           bool symmetric = false) {
  namespace impl = detail::surrogate;
  constexpr std::string_view function = "contrastive_gradient";
  detail::require(beta > 0 && std::isfinite(beta), function, "beta", "> 0 and finite", beta);
  contrastive_result<S> result;
  result.z_free = impl::checked_start(problem, theta, settings, function);

  // Free phase.
  const Vector<S>* no_linear_term = nullptr;
  result.free = impl::solve_inner(problem, loss, theta, S(0), no_linear_term, result.z_free,
                                  settings.inner, function);
  const Vector<S>& z0 = result.z_free;
  Vector<S> g0;
  impl::call_loss_gradient(loss, z0, g0, function);
  result.loss_free = S(loss.value(z0));

  // Clamped phase(s), warm-started at z^0.
  Vector<S> linear_plus, linear_minus;
  if (settings.linearised) {
    linear_plus = beta * g0;
    linear_minus = -beta * g0;
  }
  auto clamp = [&](S sign, Vector<S>& z) {
    z = z0;
    if (settings.linearised) {
      return impl::solve_inner(problem, loss, theta, S(0), sign > 0 ? &linear_plus : &linear_minus,
                               z, settings.inner, function);
    }
    return impl::solve_inner(problem, loss, theta, sign * beta, no_linear_term, z, settings.inner,
                             function);
  };
  result.clamped = clamp(S(1), result.z_clamped);
  if (symmetric) result.negative = clamp(S(-1), result.z_negative);
  const Vector<S>& zb = result.z_clamped;
  const Vector<S>& zlow = symmetric ? result.z_negative : z0;

  // The loss term at a clamped point: l itself or its Taylor expansion at z^0.
  auto loss_at = [&](const Vector<S>& z) {
    return settings.linearised ? result.loss_free + g0.dot(z - z0) : S(loss.value(z));
  };
  const S energy_high = S(problem.energy(zb, theta));
  const S energy_low = S(problem.energy(zlow, theta));
  Vector<S> gradient_low;
  impl::call_gradient_theta(problem, zb, theta, result.gradient, function);
  impl::call_gradient_theta(problem, zlow, theta, gradient_low, function);
  if (symmetric) {
    result.surrogate = (loss_at(zb) + loss_at(zlow)) / 2 + (energy_high - energy_low) / (2 * beta);
    result.gradient = (result.gradient - gradient_low) / (2 * beta);
  } else {
    result.surrogate = loss_at(zb) + (energy_high - energy_low) / beta;
    result.gradient = (result.gradient - gradient_low) / beta;
  }
  return result;
}

/// The implicit-differentiation gradient of l(z*(theta)) (docs/methods.md §5.7): solves the free
/// problem, then (d2E/dz2) v = grad l(z*) by conjugate gradients on Hessian-vector products, and
/// returns -(d2E/dz dtheta)^T v. Hessian-vector products come from the problem's hvp_zz /
/// hvp_theta_z if it has them, else from central differences of its gradients.
template <class P, class L, Scalar S>
  requires InnerProblem<P, S> && BilevelLoss<L, S>
implicit_result<S> implicit_gradient(const P& problem, const L& loss, const Vector<S>& theta,
                                     const surrogate_settings<S>& settings) {
  namespace impl = detail::surrogate;
  constexpr std::string_view function = "implicit_gradient";
  implicit_result<S> result;
  result.z = impl::checked_start(problem, theta, settings, function);
  const Index n = result.z.size();
  const Vector<S>* no_linear_term = nullptr;
  result.inner = impl::solve_inner(problem, loss, theta, S(0), no_linear_term, result.z,
                                   settings.inner, function);
  const Vector<S>& z = result.z;
  Vector<S> g;
  impl::call_loss_gradient(loss, z, g, function);
  result.loss = S(loss.value(z));

  // Conjugate gradients for H v = g from v = 0.
  auto apply = [&](const Vector<S>& v, Vector<S>& out) {
    impl::hessian_zz(problem, z, theta, v, settings.fd_step, out, function);
  };
  Vector<S>& v = result.adjoint;
  v = Vector<S>::Zero(n);
  const double target = settings.cg.tolerance * double(g.norm());
  Vector<S> r = g, p = g, hp;
  S rr = r.squaredNorm();
  Index iteration = 0;
  bool positive = true;
  while (double(std::sqrt(rr)) > target && iteration < settings.cg.max_iterations) {
    apply(p, hp);
    const S curvature = p.dot(hp);
    if (!(curvature > 0)) {
      positive = false;  // not positive definite along p (or NaN): stop, report not converged
      break;
    }
    const S alpha = rr / curvature;
    v += alpha * p;
    r -= alpha * hp;
    const S rr_next = r.squaredNorm();
    p = r + (rr_next / rr) * p;
    rr = rr_next;
    ++iteration;
  }
  result.cg_iterations = iteration;
  // The true residual of the final v (the recursive one drifts).
  Vector<S> hv;
  apply(v, hv);
  const double g_norm = double(g.norm());
  result.cg_residual = g_norm == 0 ? 0.0 : double((hv - g).norm()) / g_norm;
  result.cg_converged = positive && double(std::sqrt(rr)) <= target &&
                        std::isfinite(result.cg_residual);
  impl::require_finite(v, function, "the adjoint v");

  impl::hessian_theta_z(problem, z, theta, v, settings.fd_step, result.gradient, function);
  result.gradient = -result.gradient;
  return result;
}

}  // namespace bilevel
