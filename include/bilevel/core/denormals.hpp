#pragma once
/// \file
/// Flushing subnormal ("denormal") floats to zero. On x86 a multiplication with a subnormal
/// operand or result takes some 100 cycles instead of 4; in training, Adam's moments of weights
/// that get no gradient (units of a ReLU layer that never fire) decay geometrically into that
/// range after some hundreds of steps (one session measured a float epoch of the MNIST MLP
/// growing from 0.94 s to 1.4 s over ten epochs; README "Results: speed"). Flushing sets two bits of the thread's
/// floating-point control register: results below the smallest normal number
/// (1.2e-38 in float, 2.2e-308 in double) become zero (flush to zero), and subnormal inputs are
/// read as zero (denormals are zero). What it changes: only values that small, which in this
/// library are the decayed moments above and loss gradients of samples fitted to within 1e-38;
/// it leaves every normal number's rounding alone, and the trainer's test errors are the same
/// with and without it. It is not IEEE 754 arithmetic: code that relies on gradual underflow
/// (a ratio of two tiny numbers) must not run under it.
///
/// The control register is per thread. flush_denormals() sets it in the calling thread and, in
/// programs built with OpenMP, in every thread of the OpenMP pool (threads created later copy
/// it from the thread that creates them). Supported on x86-64 (MXCSR) and AArch64 (FPCR.FZ, which
/// does both); elsewhere it does nothing and says so.

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace bilevel {

namespace detail {

#if defined(__x86_64__) || defined(_M_X64)
inline constexpr unsigned mxcsr_flush_bits = 0x8000u | 0x0040u;  // FTZ (bit 15), DAZ (bit 6)
#elif defined(__aarch64__)
inline constexpr unsigned long fpcr_flush_bit = 1ul << 24;  // FZ: both, for single and double

inline unsigned long read_fpcr() {
  unsigned long fpcr = 0;
  asm volatile("mrs %0, fpcr" : "=r"(fpcr));
  return fpcr;
}
#endif

/// Sets or clears the flush bits in the calling thread; false where there are none.
inline bool set_thread_denormal_flushing(bool flush) {
#if defined(__x86_64__) || defined(_M_X64)
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(flush ? (csr | mxcsr_flush_bits) : (csr & ~mxcsr_flush_bits));
  return true;
#elif defined(__aarch64__)
  const unsigned long fpcr = read_fpcr();
  const unsigned long updated = flush ? (fpcr | fpcr_flush_bit) : (fpcr & ~fpcr_flush_bit);
  asm volatile("msr fpcr, %0" : : "r"(updated));
  return true;
#else
  (void)flush;
  return false;
#endif
}

}  // namespace detail

/// Flushes subnormal floats to zero (`flush` true) or restores gradual underflow (false), in
/// the calling thread and the OpenMP pool. Returns false, changing nothing, on architectures
/// without the control bits.
inline bool flush_denormals(bool flush = true) {
  const bool supported = detail::set_thread_denormal_flushing(flush);
#ifdef _OPENMP
  if (supported && !omp_in_parallel()) {
#pragma omp parallel
    detail::set_thread_denormal_flushing(flush);
  }
#endif
  return supported;
}

/// Whether the calling thread flushes subnormal results to zero.
inline bool denormals_flushed() {
#if defined(__x86_64__) || defined(_M_X64)
  return (_mm_getcsr() & detail::mxcsr_flush_bits) == detail::mxcsr_flush_bits;
#elif defined(__aarch64__)
  return (detail::read_fpcr() & detail::fpcr_flush_bit) != 0;
#else
  return false;
#endif
}

}  // namespace bilevel
