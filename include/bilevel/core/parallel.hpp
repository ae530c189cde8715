#pragma once
/// \file
/// Parallel loops over independent ranges of elements or columns, on Eigen's thread count
/// (Eigen::setNbThreads; the trainer's --threads) when the program is built with OpenMP. With
/// one thread, without OpenMP, inside another parallel region, or for work too small to pay
/// for waking a second thread, the body runs once over the whole range as a plain call.
/// Ranges are contiguous and static, so results do not depend on the thread count.

#include <Eigen/Core>
#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "types.hpp"

namespace bilevel::detail {

/// Elements below which a range stays on one thread: about a microsecond of elementwise work,
/// the cost of starting a parallel region whose threads are already awake.
inline constexpr Index parallel_grain = 16384;

/// How many ranges parallel_ranges makes for these arguments (1: a plain call).
inline Index range_count(Index count, Index cost, Index align) {
#ifdef _OPENMP
  if (omp_in_parallel()) return 1;
  const Index units = std::max<Index>(1, parallel_grain / std::max<Index>(cost, 1));
  return std::max<Index>(1, std::min<Index>(Eigen::nbThreads(), count / std::max(units, align)));
#else
  (void)count;
  (void)cost;
  (void)align;
  return 1;
#endif
}

/// Calls body(begin, end) on consecutive ranges covering [0, count), one per thread. A unit of
/// the range is `cost` elements of work (a column of r rows: cost r); every range holds at least
/// parallel_grain elements, and every range but the last is a multiple of `align` units.
template <class Body>
void parallel_ranges(Index count, Index cost, Index align, const Body& body) {
  const Index threads = range_count(count, cost, align);
  if (threads <= 1) {
    body(Index(0), count);
    return;
  }
#ifdef _OPENMP
  const Index per_thread = (count + threads - 1) / threads;
  const Index aligned = (per_thread + align - 1) / align * align;
#pragma omp parallel for num_threads(int(threads)) schedule(static, 1)
  for (Index t = 0; t < threads; ++t) {
    const Index begin = std::min(count, t * aligned);
    const Index end = t + 1 == threads ? count : std::min(count, begin + aligned);
    if (begin < end) body(begin, end);
  }
#endif
}

/// parallel_ranges for bodies that run Eigen's matrix products and must give the same bits on
/// any number of threads. Called outside a parallel region, Eigen splits a product over its
/// threads, blocking and so summing it in another order; so where parallel_ranges would call
/// the body plainly while Eigen has threads, the body runs on the first thread of a team of
/// two (the other idles), inside which Eigen keeps each product on one thread.
template <class Body>
void parallel_ranges_of_products(Index count, Index cost, Index align, const Body& body) {
#ifdef _OPENMP
  if (Eigen::nbThreads() > 1 && !omp_in_parallel() && range_count(count, cost, align) <= 1) {
#pragma omp parallel num_threads(2)
    if (omp_get_thread_num() == 0) body(Index(0), count);
    return;
  }
#endif
  parallel_ranges(count, cost, align, body);
}

/// Calls body(first, columns) on blocks of consecutive columns of a batch with `rows` rows and
/// `cols` columns: every column (sample) is independent.
template <class Body>
void parallel_columns(Index rows, Index cols, const Body& body) {
  parallel_ranges(cols, rows, 1, [&](Index begin, Index end) { body(begin, end - begin); });
}

}  // namespace bilevel::detail
