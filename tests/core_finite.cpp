// core/finite.hpp: all_finite agrees with std::isfinite on every entry, wherever the special
// value sits, in float and double, on contiguous vectors and on strided blocks.

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "bilevel/core/finite.hpp"
#include "bilevel/core/types.hpp"

using namespace bilevel;

TEMPLATE_TEST_CASE("all_finite is false exactly when an entry is NaN or Inf", "[finite]", float,
                   double) {
  using S = TestType;
  using limits = std::numeric_limits<S>;
  // Large entries whose sum overflows, subnormals, signed zeros: all finite.
  Vector<S> values(37);
  values.setLinSpaced(S(-3), S(5));
  values(0) = limits::max();
  values(1) = limits::max();
  values(2) = limits::lowest();
  values(3) = limits::denorm_min();
  values(4) = -limits::denorm_min();
  values(5) = S(-0.0);
  CHECK(all_finite(values));
  CHECK(all_finite(Vector<S>()));
  for (const S special : {limits::quiet_NaN(), limits::infinity(), -limits::infinity()}) {
    for (const Index at : {Index(0), Index(17), Index(36)}) {
      Vector<S> spoiled = values;
      spoiled(at) = special;
      CHECK_FALSE(all_finite(spoiled));
    }
  }
}

TEST_CASE("all_finite reads only the entries of a block, and all of them", "[finite]") {
  Matrix<float> m = Matrix<float>::Ones(9, 6);
  m(8, 5) = std::numeric_limits<float>::infinity();
  CHECK_FALSE(all_finite(m));
  CHECK(all_finite(m.leftCols(5)));
  CHECK(all_finite(m.topRows(8)));  // strided: each column's last entry is outside
  CHECK_FALSE(all_finite(m.bottomRightCorner(1, 1)));
  m(8, 5) = std::nanf("");
  CHECK_FALSE(all_finite(m.rightCols(1)));
  CHECK_FALSE(all_finite(MatrixCRef<float>(m)));
}
