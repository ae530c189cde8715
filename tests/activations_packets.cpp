// The pairs' vectorised derivatives (activations/indicator.hpp), and leaky ReLU's selects (which
// GCC vectorises), against their scalar df and f. Also compiled into bilevel_tests_native, where
// the comparisons run on the build machine's packets.

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <vector>

#include "bilevel/activations/activations.hpp"

using namespace bilevel;

TEMPLATE_TEST_CASE("the vectorised derivatives of ReLU, leaky ReLU and the hard pairs, and leaky "
                   "ReLU's f, equal their scalar df and f, kinks, signed zeros, subnormals, "
                   "infinities and NaN included",
                   "[activations][vjp]", float, double) {
  using S = TestType;
  const S nan = std::numeric_limits<S>::quiet_NaN(), inf = std::numeric_limits<S>::infinity();
  // Every kink of the pairs, the floats either side of it, zeros of both signs, the smallest
  // subnormals (leaky ReLU's s a rounds to a signed zero there), the infinities, NaN and
  // ordinary values; 37 rows, so that whole packets and a tail are taken.
  const S tiny = std::numeric_limits<S>::denorm_min();
  std::vector<S> values = {nan, inf, -inf, S(0), S(-0.0), tiny, -tiny, S(0.5), S(-0.5), S(2),
                           S(-2)};
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
  const auto differs = [&](S x, S expected) {
    return !same(x, expected) ||
           (!std::isnan(expected) && std::signbit(x) != std::signbit(expected));
  };
  const auto check = [&](const auto& pair) {
    vjp<S>(pair, a, v, out);
    Index differ = 0;
    for (Index i = 0; i < a.size(); ++i) differ += differs(out(i), pair.df(a(i)) * v(i));
    // One entry at a time, as Eigen takes the entries after the last whole packet.
    for (const S x : values) {
      Eigen::Array<S, 1, 1> entry;
      entry(0) = x;
      differ += differs(pair.df_expr(entry)(0, 0), pair.df(x));
    }
    INFO(pair.name());
    CHECK(differ == 0);
  };
  check(relu{});
  check(hard_sigmoid{});
  check(hard_tanh{});
  check(leaky_relu{});
  check(leaky_relu{0.3});

  for (const double slope : {0.01, 0.3}) {
    const leaky_relu pair(slope);
    activate<S>(pair, a, out);
    Index differ = 0;
    for (Index i = 0; i < a.size(); ++i) differ += differs(out(i), pair.f(a(i)));
    for (const S x : values) {
      Eigen::Array<S, 1, 1> entry;
      entry(0) = x;
      differ += differs(pair.f_expr(entry)(0, 0), pair.f(x));
    }
    INFO("leaky_relu f, slope " << slope);
    CHECK(differ == 0);
  }
}
