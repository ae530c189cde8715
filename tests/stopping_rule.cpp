// The stopping rule of docs/methods.md §5.6b (methods/stopping_rule.hpp): on a geometric
// sequence of steps it stops once the steps still to come are within the tolerance of the
// displacement, and not much later; an active-set solver's retired samples leave the others'
// histories with them.

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "bilevel/core/error.hpp"
#include "bilevel/methods/stopping_rule.hpp"

using namespace bilevel;

namespace {

constexpr double tolerance = 1e-3;

/// Step t of the samples below: 1 and from t = 4 on 0 (still), 0.5^t (converging linearly) or
/// 1 (never).
double step_of(int sample, int t) {
  if (sample == 0) return t < 4 ? 1 : 0;
  if (sample == 1) return std::pow(0.5, t);
  return 1;
}

/// Iterations until the rule holds for sample 1 observed alone.
int iterations_alone() {
  detail::displacement_rule<double> rule;
  rule.start(1, 1, tolerance);
  const RowVector<double> displacement = RowVector<double>::Ones(1);
  for (int t = 0;; ++t) {
    rule.observe(0, RowVector<double>::Constant(1, step_of(1, t)), displacement, displacement);
    if (rule.end_iteration()) return t + 1;
  }
}

}  // namespace

TEST_CASE("on a geometric sequence the rule stops once the rest is within tolerance, not much "
          "later",
          "[stopping_rule]") {
  const int stopped = iterations_alone();
  // After iteration t (steps 0..t-1 taken) the rest is sum_{i >= t} 0.5^i = 2 * 0.5^t, against
  // tolerance * displacement = 1e-3.
  const auto rest = [](int t) { return 2 * std::pow(0.5, t); };
  CHECK(rest(stopped) <= tolerance);
  // The estimate from two steps is conservative by 1 + 1 / ratio = 3: at most two more.
  CHECK(rest(stopped - 3) > tolerance);
}

TEST_CASE("retiring converged samples moves the others forward with their own histories",
          "[stopping_rule]") {
  const int alone = iterations_alone();
  detail::displacement_rule<double> rule;
  rule.start(1, 3, tolerance);
  std::vector<int> sample_at = {0, 1, 2};  // which sample each position holds
  Index active = 3;
  int retired_1 = -1;
  for (int t = 0; t < 40; ++t) {
    RowVector<double> step(active);
    for (Index p = 0; p < active; ++p) step(p) = step_of(sample_at[std::size_t(p)], t);
    const RowVector<double> ones = RowVector<double>::Ones(active);
    rule.observe(0, step, ones, ones);
    REQUIRE_FALSE(rule.end_iteration());  // sample 2 never converges
    active = rule.retire_converged(
        [&](Index p, Index q) { std::swap(sample_at[std::size_t(p)], sample_at[std::size_t(q)]); });
    if (t < 4) CHECK(active == 3);
    if (t == 4) {  // sample 0 is still from now on and leaves first
      CHECK(active == 2);
      CHECK(sample_at[2] == 0);
    }
    if (retired_1 < 0 && active == 1) retired_1 = t + 1;
    CHECK(rule.unconverged() == active);
  }
  CHECK(sample_at[0] == 2);
  // Sample 1 moved from position 1 to 0 and stops when it would alone: with sample 0's history
  // (steps 1, 1, 0 before its own 0.5^5) it would seem to contract fast and stop at t = 5.
  CHECK(retired_1 == alone);
  CHECK_THROWS_AS(rule.observe(0, RowVector<double>::Ones(2), RowVector<double>::Ones(2),
                               RowVector<double>::Ones(2)),
                  config_error);
}

TEST_CASE("a reopened sample is judged afresh from new steps; a held one keeps its history",
          "[stopping_rule]") {
  // Sample 0 takes steps of 1 (not converging) and is reopened after five iterations; then its
  // steps are 2^-20, 2^-21, ..., far below the tolerance. Judged from them alone, the rule needs
  // three (a contraction of two steps over one); with the old steps of 1 still in its history,
  // two would do. Sample 1 converges geometrically and is held once when it first meets the
  // rule: it meets it again at the next iteration, from the same history.
  const int alone = iterations_alone();
  detail::displacement_rule<double> rule;
  rule.start(1, 3, tolerance);
  const RowVector<double> ones = RowVector<double>::Ones(3);
  const int reopened_at = 5;
  int first_pass_0 = -1, first_pass_1 = -1;
  for (int t = 0; t < 2 * alone; ++t) {
    RowVector<double> step(3);
    step << (t < reopened_at ? 1.0 : std::pow(0.5, 20 + t - reopened_at)), step_of(1, t), 1.0;
    rule.observe(0, step, ones, ones);
    REQUIRE_FALSE(rule.end_iteration());  // sample 2 never converges
    if (t + 1 == reopened_at) {
      REQUIRE_FALSE(rule.converged(0));
      rule.reopen(0);
    }
    if (t >= reopened_at && first_pass_0 < 0 && rule.converged(0))
      first_pass_0 = t + 1 - reopened_at;
    if (first_pass_1 < 0 && rule.converged(1)) {
      first_pass_1 = t + 1;
      rule.hold(1);
      CHECK_FALSE(rule.converged(1));
      CHECK(rule.unconverged() == 2 + (rule.converged(0) ? 0 : 1));
    } else if (first_pass_1 > 0 && t + 1 == first_pass_1 + 1) {
      CHECK(rule.converged(1));
    }
  }
  CHECK(first_pass_0 == 3);
  CHECK(first_pass_1 == alone);
}

TEST_CASE("a sample whose iterate diverged never meets the rule", "[stopping_rule]") {
  // Samples: an overflowed displacement with an infinite step, the same with a finite step, a
  // NaN step, and a finite still one (which converges by the floor).
  const double inf = std::numeric_limits<double>::infinity();
  detail::displacement_rule<double> rule;
  rule.start(1, 4, tolerance);
  RowVector<double> step(4), displacement(4);
  step << inf, 1, std::numeric_limits<double>::quiet_NaN(), 0;
  displacement << inf, inf, 1, 1;
  for (int t = 0; t < 6; ++t) {
    rule.observe(0, step, displacement, displacement);
    CHECK_FALSE(rule.end_iteration());
  }
  CHECK_FALSE(rule.converged(0));
  CHECK_FALSE(rule.converged(1));
  CHECK_FALSE(rule.converged(2));
  CHECK(rule.converged(3));
  CHECK(rule.unconverged() == 3);
}

TEST_CASE("inner starts are named and parsed back, and other names are refused",
          "[stopping_rule]") {
  for (auto start : {inner_start::forward, inner_start::first_order})
    CHECK(parse_start(start_name(start), "caller") == start);
  CHECK(start_name(inner_start::first_order) == "first-order");
  CHECK(start_name(inner_start::forward) == "forward");
  CHECK_THROWS_WITH(parse_start("first_order", "caller"),
                    "caller: start must be \"forward\" or \"first-order\", got \"first_order\"");
  CHECK_THROWS_AS(parse_start("", "caller"), config_error);
}
