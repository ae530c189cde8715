// The parallel loops of core/parallel.hpp (this program is built with OpenMP): large batches are
// split over Eigen's threads into ranges that cover every column once, small ones stay on one
// thread, and on two threads the elementwise passes of a BP or Fenchel BP step and Adam's fused
// pass allocate nothing.

#include <catch2/catch.hpp>

#include <omp.h>
#include <vector>

#include "allocation_counter.hpp"
#include "bilevel/bilevel.hpp"

using namespace bilevel;

namespace {

/// Sets Eigen's thread count for one scope.
struct threads {
  explicit threads(int count) { Eigen::setNbThreads(count); }
  ~threads() { Eigen::setNbThreads(1); }
};

/// Which thread ran each column of a rows x cols batch (-1: none, -2: more than once).
std::vector<int> column_owners(Index rows, Index cols) {
  std::vector<int> owner(std::size_t(cols), -1);
  detail::parallel_columns(rows, cols, [&](Index first, Index count) {
    for (Index j = first; j < first + count; ++j) {
      int& slot = owner[std::size_t(j)];
      slot = slot == -1 ? omp_get_thread_num() : -2;
    }
  });
  return owner;
}

}  // namespace

TEST_CASE("parallel_columns covers every column once, on two threads only when it pays",
          "[allocations][parallel]") {
  const threads two(2);
  const std::vector<int> large = column_owners(256, 512);
  CHECK(std::count(large.begin(), large.end(), 0) == 256);
  CHECK(std::count(large.begin(), large.end(), 1) == 256);
  const std::vector<int> odd = column_owners(256, 255);
  CHECK(std::count(odd.begin(), odd.end(), 0) == 128);
  CHECK(std::count(odd.begin(), odd.end(), 1) == 127);
  const std::vector<int> small = column_owners(256, 50);  // 12,800 elements: one thread
  CHECK(std::count(small.begin(), small.end(), 0) == 50);
  const threads one(1);
  const std::vector<int> single = column_owners(256, 512);
  CHECK(std::count(single.begin(), single.end(), 0) == 512);
}

TEST_CASE("on two threads, the elementwise passes of a step and Adam allocate nothing",
          "[allocations][parallel]") {
  const threads two(2);
  random_source random(3);
  const Index n = 256, B = 512;
  const Matrix<float> a = Matrix<float>::NullaryExpr(n, B, [&] { return float(random.normal()); });
  const Matrix<float> g = Matrix<float>::NullaryExpr(n, B, [&] { return float(random.normal()); });
  Matrix<float> y = Matrix<float>::Zero(n, B);
  for (Index j = 0; j < B; ++j) y(Index(random.below(std::uint64_t(n))), j) = 1;
  Matrix<float> z(n, B), delta(n, B), top(n, B);
  RowVector<float> losses(B);
  auto net = make_mlp<float, relu>({n, n});
  adam<float> optimizer({}, net.parameter_count(), net.weight_count());
  const Vector<float> gradient = Vector<float>::Constant(net.parameter_count(), 1e-3f);

  allocation_counter::start();
  activate<float>(relu{}, a, z);
  vjp<float>(relu{}, a, g, delta);
  fenchel_signal<float>(relu{}, a, z, g, 0.01f, delta);
  net.loss_values(a, y, losses);
  net.loss_gradient(a, y, top);
  optimizer.step(net.parameters(), gradient);
  const std::size_t allocations = allocation_counter::stop();
  CHECK(allocations == 0);
  // The parallel passes computed what one thread computes.
  const threads one(1);
  Matrix<float> serial(n, B);
  fenchel_signal<float>(relu{}, a, z, g, 0.01f, serial);
  CHECK(serial == delta);
  activate<float>(relu{}, a, serial);
  CHECK(serial == z);
}
