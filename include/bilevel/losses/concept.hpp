#pragma once
/// \file
/// What an outer loss l(z_L, y) provides: per-sample values and per-sample gradients in z_L.

#include <concepts>
#include <string>

#include "../core/types.hpp"

namespace bilevel {

template <class L, class S>
concept OuterLoss = Scalar<S> && requires(const L& loss, const Matrix<S>& z, Matrix<S>& g) {
  { loss.name() } -> std::convertible_to<std::string>;
  { loss.template value<S>(z, z) } -> std::convertible_to<RowVector<S>>;
  loss.template gradient<S>(z, z, g);
};

namespace detail {

/// A bound on the norm of a loss's Hessian in its input: its `curvature`, or 1 (a loss may
/// state it as `static constexpr double curvature`; AltMin sizes its code steps by it).
template <class L>
constexpr double loss_curvature() {
  if constexpr (requires { L::curvature; })
    return L::curvature;
  else
    return 1;
}

}  // namespace detail
}  // namespace bilevel
