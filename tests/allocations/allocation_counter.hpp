#pragma once
// Counts heap allocations in a window: global operator new is replaced in this test program,
// and Eigen (built here with EIGEN_RUNTIME_NO_MALLOC) reports each of its own mallocs through
// eigen_assert, which this program defines to count instead of aborting.

#include <cstddef>

namespace allocation_counter {

/// Starts counting (and forbids Eigen's mallocs); returns nothing.
void start();
/// Stops counting; returns the allocations since start() (operator new and Eigen's malloc).
std::size_t stop();
/// Called by eigen_assert when one of Eigen's checks fails.
void eigen_check_failed(const char* condition, const char* file, int line);

}  // namespace allocation_counter

#define eigen_assert(x) \
  ((x) ? static_cast<void>(0) : ::allocation_counter::eigen_check_failed(#x, __FILE__, __LINE__))
