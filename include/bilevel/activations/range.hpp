#pragma once
/// \file
/// How a pair with bounded values declares them, as an optional member
/// `static constexpr activation_range range{lower, upper, clips};` (activations/concept.hpp).
/// EP reads it to build its Hopfield energy from a program (docs/methods.md §5.3).

#include <concepts>

namespace bilevel {

/// The closure [lower, upper] of a bounded activation's range; `clips`: f is the projection
/// onto it, f(a) = clip(a, lower, upper), and so the identity on [lower, upper] (hard sigmoid,
/// hard tanh), as opposed to a smooth f that only tends to its bounds (sigmoid, tanh).
struct activation_range {
  double lower = 0;
  double upper = 1;
  bool clips = false;
};

/// Pairs that declare a bounded range.
template <class P>
concept bounded_pair = requires {
  { P::range } -> std::convertible_to<activation_range>;
};

}  // namespace bilevel
