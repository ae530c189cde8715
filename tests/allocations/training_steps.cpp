// After warm-up, a BP or Fenchel BP training step allocates nothing: two steps on batches of the
// working size size every buffer, then three more steps (gradient and Adam) run with heap
// allocation forbidden and counted. The paper's MLP at batch 50 in float, as the trainer runs
// it. (The iterative methods still allocate in their inner solvers; see README "Speed".)

#include <catch2/catch.hpp>

#include <tuple>

#include "allocation_counter.hpp"
#include "bilevel/bilevel.hpp"

using namespace bilevel;

namespace {

struct batch {
  Matrix<float> x, y;
};

batch random_batch(random_source& random, Index inputs, Index classes, Index size) {
  batch b{Matrix<float>(inputs, size), Matrix<float>::Zero(classes, size)};
  for (Index j = 0; j < size; ++j) {
    for (Index i = 0; i < inputs; ++i) b.x(i, j) = float(random.uniform());
    b.y(Index(random.below(std::uint64_t(classes))), j) = 1;
  }
  return b;
}

/// Allocations during three steps after two warm-up steps.
template <class Method>
std::size_t allocations_per_three_steps(Method& method, bool native) {
  random_source random(1);
  auto net = make_mlp<float, relu>({784, 256, 128, 64, 10});
  net.initialize(init_scheme::glorot_uniform, random);
  adam<float> optimizer({}, net.parameter_count(), net.weight_count());
  Vector<float> gradient;
  const batch batches[2] = {random_batch(random, 784, 10, 50), random_batch(random, 784, 10, 50)};
  const auto step = [&](const batch& b) {
    if constexpr (StepMethod<Method, decltype(net)>) {
      if (native) {
        method.train_step(net, b.x, b.y);
        return;
      }
    }
    if constexpr (GradientMethod<Method, decltype(net)>) {
      method.gradient(net, b.x, b.y, gradient);
      optimizer.step(net.parameters(), gradient);
    }
  };
  step(batches[0]);
  step(batches[1]);
  allocation_counter::start();
  for (int i = 0; i < 3; ++i) step(batches[i % 2]);
  return allocation_counter::stop();
}

}  // namespace

TEST_CASE("the counter sees Eigen's and operator new's allocations", "[allocations]") {
  allocation_counter::start();
  Matrix<float> m(40, 40);
  auto* boxed = new int(3);
  const std::size_t seen = allocation_counter::stop();
  delete boxed;
  CHECK(seen == 2);
  CHECK(m.size() == 1600);
}

TEST_CASE("BP and Fenchel BP steps with Adam allocate nothing after warm-up", "[allocations]") {
  bp<float> backprop;
  CHECK(allocations_per_three_steps(backprop, false) == 0);
  fenchel_bp<float> fenchel(0.01f);
  CHECK(allocations_per_three_steps(fenchel, false) == 0);
}
