#pragma once
// Probes of subnormal arithmetic for the tests of core/denormals.hpp (tests/core_denormals.cpp,
// tests/openmp/denormals.cpp).

#include <limits>

#include "bilevel/core/denormals.hpp"

namespace bilevel::testing {

/// Half the smallest normal float (a subnormal result) and a subnormal input times one, computed
/// where the compiler cannot fold them.
struct underflow {
  float halved_normal;
  float subnormal_times_one;
};

inline underflow probe_underflow() {
  volatile float smallest_normal = std::numeric_limits<float>::min();
  volatile float subnormal = std::numeric_limits<float>::denorm_min();
  volatile float half = 0.5f, one = 1.0f;
  return {smallest_normal * half, subnormal * one};
}

/// Puts the calling thread's (and the OpenMP pool's) gradual underflow back when a test ends.
struct restore_gradual_underflow {
  ~restore_gradual_underflow() { flush_denormals(false); }
};

}  // namespace bilevel::testing
