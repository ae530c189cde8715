#pragma once
/// \file
/// The derivative of a piecewise-linear pair as a vectorised Eigen expression: 1 where a lies
/// strictly inside the pair's sloped piece, 0 elsewhere (NaN too, which compares false), the
/// same values as the scalar `a > lo && a < hi ? 1 : 0`. Eigen 3.4 evaluates a comparison cast
/// to a scalar, `(a > 0).cast<S>()`, one element at a time; these compare packets and keep the
/// bits of 1 where the comparison holds (ReLU's vjp on a 448 x 50 batch: 12.5 us -> 2.4 us).

#include <Eigen/Core>

namespace bilevel::detail {

/// 1 where lo < a (and a < hi when Bounded), else 0.
template <class S, bool Bounded>
struct indicator_op {
  S lo, hi;
  S operator()(S a) const { return lo < a && (!Bounded || a < hi) ? S(1) : S(0); }
  template <class Packet>
  Packet packetOp(const Packet& a) const {
    using namespace Eigen::internal;
    Packet inside = pcmp_lt(pset1<Packet>(lo), a);
    if constexpr (Bounded) inside = pand(inside, pcmp_lt(a, pset1<Packet>(hi)));
    return pand(inside, pset1<Packet>(S(1)));
  }
};

/// 1 where a > lo, else 0, over an Eigen array expression.
template <class A>
auto indicator_above(const A& a, typename A::Scalar lo) {
  using S = typename A::Scalar;
  return a.unaryExpr(indicator_op<S, false>{lo, S(0)});
}

/// 1 where lo < a < hi, else 0, over an Eigen array expression.
template <class A>
auto indicator_between(const A& a, typename A::Scalar lo, typename A::Scalar hi) {
  using S = typename A::Scalar;
  return a.unaryExpr(indicator_op<S, true>{lo, hi});
}

}  // namespace bilevel::detail

namespace Eigen::internal {
template <class S, bool Bounded>
struct functor_traits<bilevel::detail::indicator_op<S, Bounded>> {
  enum {
    Cost = (Bounded ? 3 : 2) * NumTraits<S>::AddCost,
    PacketAccess = packet_traits<S>::HasCmp
  };
};
}  // namespace Eigen::internal
