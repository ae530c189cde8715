// After warm-up, a training step allocates nothing, for every method and step mode: two steps on
// batches of the working size size every buffer, then ten more steps (gradient and Adam, or
// the method's native step) run with heap allocation forbidden and counted. The paper's MLP at
// batch 50 in float, as the trainer runs it, on one thread. (On two, Eigen 3.4's parallel
// products take their shared packing buffer from the heap, a few per step; our own parallel
// loops allocate nothing: parallel_loops.cpp.)

#include <catch2/catch.hpp>

#include <span>
#include <vector>

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

enum class mode { gradient, native };
/// The paper's MLP, or a small CNN with every image map (conv, pooling, dense) on 28 x 28; its
/// two convolutions of different shapes share the thread's patch buffer.
enum class model { mlp, cnn };

template <class Hidden>
mlp<float, Hidden> make_program(model kind) {
  if (kind == model::mlp) return make_mlp<float, Hidden>({784, 256, 128, 64, 10});
  return mlp<float, Hidden>({1, 28, 28}, parse_architecture("conv4k5s2p1-pool2-conv6k3-dense32-dense10"),
                            {Hidden{}, identity{}, Hidden{}, Hidden{}, identity{}});
}

/// Allocations during ten steps after two warm-up steps (ten, so that paths a solver takes
/// only now and then, such as LPOM's proximal fallback, are seen too). `Hidden`: the hidden
/// layers' pair (EP needs a bounded one). Methods that take sample indices get them, the two
/// batches being examples 0-49 and 50-99 of a training set.
template <class Method, class Hidden = relu>
std::size_t allocations_after_warm_up(Method& method, mode step_mode, model kind = model::mlp) {
  random_source random(1);
  auto net = make_program<Hidden>(kind);
  net.initialize(init_scheme::glorot_uniform, random);
  adam<float> optimizer({}, net.parameter_count(), net.weight_count());
  Vector<float> gradient;
  const batch batches[2] = {random_batch(random, 784, 10, 50), random_batch(random, 784, 10, 50)};
  std::vector<Index> samples(100);
  for (std::size_t i = 0; i < samples.size(); ++i) samples[i] = Index(i);
  const auto step = [&](const batch& b) {
    if constexpr (StepMethod<Method, decltype(net)>) {
      if (step_mode == mode::native) {
        method.train_step(net, b.x, b.y);
        return;
      }
    }
    if constexpr (SampleIndexedMethod<Method, decltype(net)>) {
      const std::size_t first = &b == &batches[0] ? 0 : 50;
      method.gradient(net, b.x, b.y, std::span<const Index>(samples).subspan(first, 50),
                      gradient);
    } else {
      method.gradient(net, b.x, b.y, gradient);
    }
    optimizer.step(net.parameters(), gradient);
  };
  Eigen::setNbThreads(1);  // with OpenMP, Eigen's default is every core
  step(batches[0]);
  step(batches[1]);
  allocation_counter::start();
  for (int i = 0; i < 10; ++i) step(batches[i % 2]);
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
  CHECK(allocations_after_warm_up(backprop, mode::gradient) == 0);
  fenchel_bp<float> fenchel(0.01f);
  CHECK(allocations_after_warm_up(fenchel, mode::gradient) == 0);
}

TEST_CASE("CHL, EP, PCN and Z-IL steps with Adam allocate nothing after warm-up",
          "[allocations]") {
  chl<float> contrastive;
  CHECK(allocations_after_warm_up(contrastive, mode::gradient) == 0);
  ep<float> equilibrium;
  CHECK(allocations_after_warm_up<ep<float>, hard_sigmoid>(equilibrium, mode::gradient) == 0);
  // The converged mode, one-sided, with persistent particles and per-layer factors.
  ep<float> persistent({.beta = 0.5f,
                        .mode = ep<float>::relaxation::converged,
                        .free_stopping = {1e-4f, 200},
                        .nudged_stopping = {1e-3f, 100},
                        .symmetric = false,
                        .random_sign = true,
                        .particles = 100,
                        .layer_scales = {0.4f, 0.3f, 0.2f, 0.1f}});
  CHECK(allocations_after_warm_up<ep<float>, sigmoid>(persistent, mode::gradient) == 0);
  ep<float> mirrored({.mode = ep<float>::relaxation::converged, .mirrored_start = true});
  CHECK(allocations_after_warm_up<ep<float>, hard_sigmoid>(mirrored, mode::gradient) == 0);
  // PCN on its trainer's pair, sigmoid: on ReLU at these random weights its inference takes
  // thousands of steps per training step (35 s of this test), which prove nothing more.
  pcn<float> mixed;  // the default dynamics, with its histories
  CHECK(allocations_after_warm_up<pcn<float>, sigmoid>(mixed, mode::gradient) == 0);
  pcn<float> accelerated({.inference = pcn_inference::momentum});  // momentum's buffers too
  CHECK(allocations_after_warm_up<pcn<float>, sigmoid>(accelerated, mode::gradient) == 0);
  pcn<float> plain({.inference = pcn_inference::plain});  // its per-sample rates too
  CHECK(allocations_after_warm_up<pcn<float>, sigmoid>(plain, mode::gradient) == 0);
  pcn<float> zero_divergence = pcn<float>::zil();
  CHECK(allocations_after_warm_up(zero_divergence, mode::gradient) == 0);
}

TEMPLATE_TEST_CASE("block-coordinate steps allocate nothing after warm-up, in both modes",
                   "[allocations]", mac<float>, lpom<float>, fln<float>, altmin<float>) {
  TestType gradient_method;
  CHECK(allocations_after_warm_up(gradient_method, mode::gradient) == 0);
  TestType native_method;
  CHECK(allocations_after_warm_up(native_method, mode::native) == 0);
}

TEMPLATE_TEST_CASE("steps on a CNN allocate nothing after warm-up, in both modes",
                   "[allocations][conv]", bp<float>, chl<float>, pcn<float>, mac<float>,
                   lpom<float>, fln<float>, altmin<float>) {
  TestType gradient_method;
  CHECK(allocations_after_warm_up(gradient_method, mode::gradient, model::cnn) == 0);
  if constexpr (StepMethod<TestType, mlp<float, relu>>) {
    TestType native_method;
    CHECK(allocations_after_warm_up(native_method, mode::native, model::cnn) == 0);
  }
}

TEST_CASE("Fenchel BP and Z-IL steps on a CNN allocate nothing after warm-up",
          "[allocations][conv]") {
  fenchel_bp<float> fenchel(0.01f);
  CHECK(allocations_after_warm_up(fenchel, mode::gradient, model::cnn) == 0);
  pcn<float> zero_divergence = pcn<float>::zil();
  CHECK(allocations_after_warm_up(zero_divergence, mode::gradient, model::cnn) == 0);
}
