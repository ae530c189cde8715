// The counter behind allocation_counter.hpp. A failed Eigen check other than the malloc guard
// is a real bug and aborts.

#include "allocation_counter.hpp"

#include <Eigen/Core>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

namespace {
std::atomic<bool> counting{false};
std::atomic<std::size_t> allocations{0};
}  // namespace

namespace allocation_counter {

void start() {
  allocations = 0;
  counting = true;
  Eigen::internal::set_is_malloc_allowed(false);
}

std::size_t stop() {
  Eigen::internal::set_is_malloc_allowed(true);
  counting = false;
  return allocations;
}

void eigen_check_failed(const char* condition, const char* file, int line) {
  if (std::strstr(condition, "is_malloc_allowed") != nullptr) {
    ++allocations;
    return;
  }
  std::fprintf(stderr, "%s:%d: Eigen check failed: %s\n", file, line, condition);
  std::abort();
}

}  // namespace allocation_counter

void* operator new(std::size_t size) {
  if (counting) ++allocations;
  if (void* memory = std::malloc(size == 0 ? 1 : size)) return memory;
  throw std::bad_alloc();
}
void operator delete(void* memory) noexcept { std::free(memory); }
void operator delete(void* memory, std::size_t) noexcept { std::free(memory); }
