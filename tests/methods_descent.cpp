// The step sizes the block-descent methods share (methods/descent.hpp): the weight blocks'
// line search and the lifted z-blocks' step growth.
#include <catch2/catch.hpp>

#include <vector>

#include "bilevel/methods/descent.hpp"

using bilevel::Index;
using bilevel::detail::armijo_backtracking;
using bilevel::detail::grown_step;

namespace {

/// f(x) = x^2 / 2 from x = 1 along -f'(1) = -1: f(1 - t) = (1 - t)^2 / 2, ||g||^2 = 1.
struct quadratic_search {
  double x = 1;
  std::vector<double> tried;
  void move(double t) {
    x = 1 - t;
    tried.push_back(t);
  }
  double value() const { return x * x / 2; }
};

}  // namespace

TEST_CASE("the line search halves the step until Armijo's sufficient decrease holds",
          "[descent]") {
  quadratic_search search;
  double step = 4;
  // f(1 - t) <= 1/2 - 0.1 t holds for t <= 1.8: 4 and 2 are refused (f = 4.5, 0.5), 1 taken.
  const auto result = armijo_backtracking(
      step, 0.5, 1.0, 0.1, 10, [&](double t) { search.move(t); },
      [&] { return search.value(); });
  CHECK(result.accepted);
  CHECK(result.tries == 3);
  CHECK(step == 1);
  CHECK(search.tried == std::vector<double>{4, 2, 1});
  CHECK(search.x == 0);  // the variables are left at the accepted step
}

TEST_CASE("the line search refuses a step that raises the objective, however small the rise",
          "[descent]") {
  // At t = 2 the objective is back where it started (no decrease): refused at any constant.
  for (const double armijo : {1e-4, 0.1, 0.5}) {
    CAPTURE(armijo);
    quadratic_search search;
    double step = 2;
    const auto result = armijo_backtracking(
        step, 0.5, 1.0, armijo, 1, [&](double t) { search.move(t); },
        [&] { return search.value(); });
    CHECK_FALSE(result.accepted);
    CHECK(result.tries == 1);
    CHECK(step == 1);  // halved past the refused step
  }
}

TEST_CASE("the line search gives up after its tries with the step halved each time",
          "[descent]") {
  quadratic_search search;
  double step = 64;
  // Steps above 1.8 fail: 64, 32, 16, 8 are tried and refused.
  const auto result = armijo_backtracking(
      step, 0.5, 1.0, 0.1, 4, [&](double t) { search.move(t); },
      [&] { return search.value(); });
  CHECK_FALSE(result.accepted);
  CHECK(result.tries == 4);
  CHECK(step == 4);
  CHECK(search.tried == std::vector<double>{64, 32, 16, 8});
}

TEST_CASE("after an accepted trial the step grows to 0.8 of the curvature test's bound, by a "
          "factor between 1 and 1.5",
          "[descent]") {
  // The test accepts t along a move while <dq, dz> <= ||dz||^2 / t: here ||dz||^2 = 2, so the
  // bound is 2 / curvature.
  CHECK(grown_step(1.0, 2.0, 1.5) == Approx(0.8 * 2.0 / 1.5));  // 1.07: between 1 and 1.5
  CHECK(grown_step(1.0, 2.0, 0.5) == 1.5);                      // bound 4: capped at 1.5 t
  CHECK(grown_step(1.0, 2.0, 1.9) == 1.0);                      // 0.84 < t: kept, not shrunk
  CHECK(grown_step(0.25, 2.0, 0.0) == 0.375);   // no curvature along the move: 1.5 t
  CHECK(grown_step(0.25, 2.0, -1e-17) == 0.375);  // rounding below zero: the same
  CHECK(grown_step(1.0f, 2.0f, 1.5f) == Approx(0.8f * 2.0f / 1.5f));
}
