#pragma once
/// \file
/// A finiteness check that costs one vectorised pass.

#include <Eigen/Core>

namespace bilevel {

/// Whether every entry of `values` is finite. 0 * v is +-0 for finite v and NaN for Inf or NaN,
/// and a sum with a NaN term is NaN, so one vectorised reduction decides it. Eigen's allFinite()
/// compares v - v with itself one entry at a time: checking a Fenchel BP step's gradient and
/// parameters that way took 17% of a trainer epoch. Relies on IEEE arithmetic (no
/// -ffast-math), as the library does throughout.
template <class Derived>
bool all_finite(const Eigen::DenseBase<Derived>& values) {
  using S = typename Derived::Scalar;
  return (values.derived().array() * S(0)).sum() == S(0);
}

}  // namespace bilevel
