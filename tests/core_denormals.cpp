// core/denormals.hpp in the calling thread: flushing turns subnormal results and inputs into
// zero and leaves normal rounding alone, and turning it off restores gradual underflow. The
// OpenMP pool's threads: tests/openmp/denormals.cpp.

#include <catch2/catch.hpp>

#include <limits>

#include "bilevel/core/denormals.hpp"
#include "denormal_probe.hpp"

using namespace bilevel;
using namespace bilevel::testing;

TEST_CASE("flushing denormals zeroes subnormal results and inputs, and can be turned off",
          "[denormals]") {
  restore_gradual_underflow restore;
  const bool supported = flush_denormals(true);
#if defined(__x86_64__) || defined(__aarch64__)
  REQUIRE(supported);
#endif
  if (!supported) return;
  CHECK(denormals_flushed());
  const underflow flushed = probe_underflow();
  CHECK(flushed.halved_normal == 0u);
  CHECK(flushed.scaled_subnormal == 0u);
  // Normal numbers round as before.
  volatile float third = 1.0f / 3.0f, three = 3.0f;
  CHECK(third * three == 1.0f);

  CHECK(flush_denormals(false));
  CHECK_FALSE(denormals_flushed());
  const underflow gradual = probe_underflow();
  CHECK(gradual.halved_normal == bits(std::numeric_limits<float>::min() / 2));
  CHECK(gradual.scaled_subnormal == bits(0x1p-125f));
}
