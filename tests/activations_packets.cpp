// The pairs' vectorised derivatives (activations/indicator.hpp) against their scalar df. Also
// compiled into bilevel_tests_native, where the comparisons run on the build machine's packets.

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "bilevel/activations/activations.hpp"

using namespace bilevel;

TEMPLATE_TEST_CASE("the vectorised derivatives of ReLU and the hard pairs equal their scalar df, "
                   "kinks, signed zeros, infinities and NaN included",
                   "[activations][vjp]", float, double) {
  using S = TestType;
  const S nan = std::numeric_limits<S>::quiet_NaN(), inf = std::numeric_limits<S>::infinity();
  // Every kink of the three pairs, the floats either side of it, zeros of both signs, the
  // infinities, NaN and ordinary values; 37 rows, so that whole packets and a tail are taken.
  std::vector<S> values = {nan, inf, -inf, S(0), S(-0.0), S(0.5), S(-0.5), S(2), S(-2)};
  for (const S kink : {S(0), S(1), S(-1)})
    for (const S to : {-inf, inf}) values.push_back(std::nextafter(kink, to));
  values.push_back(S(1));
  values.push_back(S(-1));
  Matrix<S> a(37, 3), v(37, 3), out(37, 3);
  for (Index i = 0; i < a.size(); ++i) {
    a(i) = values[std::size_t(i) % values.size()];
    v(i) = i % 11 == 3 ? nan : S(0.25) * S(i % 7) - S(0.75);  // a NaN where df is 0, too
  }
  const auto same = [](S x, S y) { return (std::isnan(x) && std::isnan(y)) || x == y; };
  const auto check = [&](const auto& pair) {
    vjp<S>(pair, a, v, out);
    Index differ = 0;
    for (Index i = 0; i < a.size(); ++i) {
      const S expected = pair.df(a(i)) * v(i);
      differ += !same(out(i), expected) ||
                (!std::isnan(expected) && std::signbit(out(i)) != std::signbit(expected));
    }
    // One entry at a time, as Eigen takes the entries after the last whole packet.
    for (const S x : values) {
      Eigen::Array<S, 1, 1> entry;
      entry(0) = x;
      const S slope = pair.df_expr(entry)(0), expected = pair.df(x);
      differ += !same(slope, expected) || std::signbit(slope) != std::signbit(expected);
    }
    INFO(pair.name());
    CHECK(differ == 0);
  };
  check(relu{});
  check(hard_sigmoid{});
  check(hard_tanh{});
}
