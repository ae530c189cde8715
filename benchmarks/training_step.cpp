// One training step of the Fenchel BP paper's MLP (784-256-128-64-10, float) at several batch
// sizes, next to its physical floor: the step's matrix products alone (GEMM-only) and those
// plus one Adam pass over all parameters. scripts/benchmark.sh turns the timings into ratios.

#include <benchmark/benchmark.h>

#include <vector>

#include "bilevel/bilevel.hpp"
#include "same_start.hpp"

namespace {

using S = float;
const std::vector<bilevel::Index> sizes = {784, 256, 128, 64, 10};

struct step_fixture {
  bilevel::mlp<S, bilevel::relu> net = bilevel::make_mlp<S, bilevel::relu>(sizes);
  bilevel::Matrix<S> x, y;
  bilevel::Vector<S> gradient;
  bilevel::adam<S> optimizer{{}, net.parameter_count(), net.weight_count()};

  explicit step_fixture(bilevel::Index batch) {
    bilevel::random_source random(1);
    net.initialize(bilevel::init_scheme::glorot_uniform, random);
    x = bilevel::Matrix<S>::NullaryExpr(784, batch, [&] { return S(random.uniform()); });
    y = bilevel::Matrix<S>::Zero(10, batch);
    for (bilevel::Index j = 0; j < batch; ++j) y(bilevel::Index(random.below(10)), j) = 1;
    gradient = net.zero_like_parameters();
  }
};

/// Multiply-adds of a step: forward W z, weight gradients delta z^T, errors W^T delta above
/// layer 1; two flops each.
double step_flops(bilevel::Index batch) {
  double flops = 0;
  for (std::size_t k = 1; k < sizes.size(); ++k) {
    const double products = double(sizes[k]) * double(sizes[k - 1]) * double(batch);
    flops += 2 * products * (k == 1 ? 2 : 3);
  }
  return flops;
}

/// Exactly the matrix products of one BP step, preallocated, without anything else.
void gemm_products(step_fixture& f, std::vector<bilevel::Matrix<S>>& z,
                   std::vector<bilevel::Matrix<S>>& delta) {
  const auto L = f.net.depth();
  for (bilevel::Index k = 0; k < L; ++k) z[std::size_t(k + 1)].noalias() = f.net.weights(k) * z[std::size_t(k)];
  for (bilevel::Index k = L - 1; k >= 0; --k) {
    f.net.layer(k).weights(f.gradient).noalias() =
        delta[std::size_t(k)] * z[std::size_t(k)].transpose();
    if (k > 0)
      delta[std::size_t(k - 1)].noalias() = f.net.weights(k).transpose() * delta[std::size_t(k)];
  }
}

void run_floor(benchmark::State& state, bool with_adam) {
  const bilevel::Index batch = state.range(0);
  step_fixture f(batch);
  std::vector<bilevel::Matrix<S>> z, delta;
  for (std::size_t k = 0; k < sizes.size(); ++k) z.push_back(bilevel::Matrix<S>::Ones(sizes[k], batch));
  z[0] = f.x;
  for (std::size_t k = 1; k < sizes.size(); ++k)
    delta.push_back(bilevel::Matrix<S>::Constant(sizes[k], batch, S(1e-3)));
  for (auto _ : state) {
    gemm_products(f, z, delta);
    if (with_adam) f.optimizer.step(f.net.parameters(), f.gradient);
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] = benchmark::Counter(step_flops(batch) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void gemm_only(benchmark::State& state) { run_floor(state, false); }
void gemm_adam(benchmark::State& state) { run_floor(state, true); }

/// One step per iteration, each from the state after a first, untimed step (same_start.hpp).
template <class Method>
void method_step(benchmark::State& state, Method method) {
  step_fixture f(state.range(0));
  const auto take_step = [&] {
    benchmark::DoNotOptimize(method.gradient(f.net, f.x, f.y, f.gradient));
    f.optimizer.step(f.net.parameters(), f.gradient);
  };
  take_step();
  same_start start(f.net.parameters(), f.optimizer, method);
  for (auto _ : state) {
    start.restore(state);
    take_step();
    benchmark::ClobberMemory();
  }
  state.counters["samples/s"] =
      benchmark::Counter(double(state.range(0)), benchmark::Counter::kIsIterationInvariantRate);
}

void bp_step(benchmark::State& state) { method_step(state, bilevel::bp<S>{}); }
void fenbp_step(benchmark::State& state) { method_step(state, bilevel::fenchel_bp<S>(0.01f)); }

}  // namespace

BENCHMARK(gemm_only)->Arg(50)->Arg(128)->Arg(512)->Unit(benchmark::kMicrosecond);
BENCHMARK(gemm_adam)->Arg(50)->Arg(128)->Arg(512)->Unit(benchmark::kMicrosecond);
BENCHMARK(bp_step)->Arg(50)->Arg(128)->Arg(512)->Unit(benchmark::kMicrosecond);
BENCHMARK(fenbp_step)->Arg(50)->Arg(128)->Arg(512)->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
