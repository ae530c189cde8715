#pragma once
// Probes of subnormal arithmetic for the tests of core/denormals.hpp (tests/core_denormals.cpp,
// tests/openmp/denormals.cpp).

#include <bit>
#include <cstdint>
#include <limits>

#include "bilevel/core/denormals.hpp"

namespace bilevel::testing {

/// What the calling thread's arithmetic makes of subnormals, as bit patterns: a comparison
/// would itself read a subnormal as zero under denormals-are-zero.
struct underflow {
  std::uint32_t halved_normal;    ///< min / 2, a subnormal result: 0 under flush-to-zero
  std::uint32_t scaled_subnormal;  ///< denorm_min * 2^24 = 2^-125, a normal result from a
                                   ///< subnormal input: 0 under denormals-are-zero
};

inline underflow probe_underflow() {
  volatile float smallest_normal = std::numeric_limits<float>::min();
  volatile float subnormal = std::numeric_limits<float>::denorm_min();
  volatile float half = 0.5f, two_to_24 = 16777216.0f;
  return {std::bit_cast<std::uint32_t>(float(smallest_normal * half)),
          std::bit_cast<std::uint32_t>(float(subnormal * two_to_24))};
}

/// The bit pattern of x, for comparing with probe_underflow()'s results.
constexpr std::uint32_t bits(float x) { return std::bit_cast<std::uint32_t>(x); }

/// Puts the calling thread's (and the OpenMP pool's) gradual underflow back when a test ends.
struct restore_gradual_underflow {
  ~restore_gradual_underflow() { flush_denormals(false); }
};

}  // namespace bilevel::testing
