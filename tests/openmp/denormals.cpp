// core/denormals.hpp across threads: flush_denormals() reaches every thread of the OpenMP
// pool, including threads that existed before it was called. A program of its own, built with
// OpenMP (the main suite runs without it).

#include <catch2/catch.hpp>

#include <omp.h>

#include <algorithm>
#include <vector>

#include "bilevel/core/denormals.hpp"
#include "denormal_probe.hpp"

using namespace bilevel;
using namespace bilevel::testing;

TEST_CASE("flushing denormals reaches every thread of the OpenMP pool", "[denormals]") {
  restore_gradual_underflow restore;
  const int threads = std::max(2, omp_get_max_threads());
  // Start the pool first: its threads exist before the switch, so the switch must reach them.
  std::vector<underflow> results(std::size_t(threads), underflow{1u, 1u});
#pragma omp parallel num_threads(threads)
  results[std::size_t(omp_get_thread_num())] = probe_underflow();
  for (const underflow& result : results) {  // gradual underflow before
    REQUIRE(result.halved_normal != 0u);
    REQUIRE(result.scaled_subnormal != 0u);
  }
  REQUIRE(flush_denormals(true));
#pragma omp parallel num_threads(threads)
  results[std::size_t(omp_get_thread_num())] = probe_underflow();
  for (const underflow& result : results) {
    CHECK(result.halved_normal == 0u);
    CHECK(result.scaled_subnormal == 0u);
  }
}
