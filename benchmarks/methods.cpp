// Training steps of every method on the Fenchel BP paper's MLP (784-256-128-64-10, float, batch
// 50, one thread unless stated), for ratios to the BP step measured in the same run; the inner
// iterations each step reported are a counter, so scripts/benchmark.sh can set the time against
// the cost model "iterations x one BP step". Also BP and Fenchel BP at 1 and 2 threads, the
// per-element cost of the activation pairs (f and the Fenchel BP signal) and idx loading.

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <filesystem>
#include <string>
#include <type_traits>
#include <unistd.h>
#include <vector>

#include "bilevel/bilevel.hpp"
#include "same_start.hpp"

namespace {

using S = float;
using bilevel::Index;
const std::vector<Index> sizes = {784, 256, 128, 64, 10};

/// The paper's MLP with `Hidden` hidden layers.
template <class Hidden>
struct fixture {
  bilevel::mlp<S, Hidden> net = bilevel::make_mlp<S, Hidden>(sizes);
  bilevel::Matrix<S> x, y;
  bilevel::Vector<S> gradient;
  bilevel::adam<S> optimizer{{}, net.parameter_count(), net.weight_count()};

  explicit fixture(Index batch) {
    bilevel::random_source random(1);
    net.initialize(bilevel::init_scheme::glorot_uniform, random);
    x = bilevel::Matrix<S>::NullaryExpr(784, batch, [&] { return S(random.uniform()); });
    y = bilevel::Matrix<S>::Zero(10, batch);
    for (Index j = 0; j < batch; ++j) y(Index(random.below(10)), j) = 1;
    gradient = net.zero_like_parameters();
  }
};

/// One step per iteration: the method's gradient and Adam, or its native step, each from the
/// state after a first, untimed step (same_start.hpp).
template <class Method>
void step(benchmark::State& state, Method method, bool native) {
  // ReLU hidden layers; hard sigmoid for EP, which needs a bounded pair there (methods/ep.hpp),
  // and the logistic sigmoid of the trainer's PCN (and Z-IL): at ReLU kinks PCN's fixed-rate
  // inference chatters and would only show its cap (methods/pcn.hpp).
  using hidden = std::conditional_t<
      std::is_same_v<Method, bilevel::ep<S>>, bilevel::hard_sigmoid,
      std::conditional_t<std::is_same_v<Method, bilevel::pcn<S>>, bilevel::sigmoid, bilevel::relu>>;
  fixture<hidden> f(state.range(0));
  Eigen::setNbThreads(int(state.range(1)));
  const auto take_step = [&] {
    bilevel::step_report report;
    if constexpr (bilevel::StepMethod<Method, decltype(f.net)>) {
      if (native) report = method.train_step(f.net, f.x, f.y);
    }
    if (!native) {
      report = method.gradient(f.net, f.x, f.y, f.gradient);
      f.optimizer.step(f.net.parameters(), f.gradient);
    }
    return report;
  };
  take_step();
  same_start start(f.net.parameters(), f.optimizer, method);
  double iterations = 0;
  for (auto _ : state) {
    start.restore(state);
    iterations += double(take_step().inner_iterations);
    benchmark::ClobberMemory();
  }
  Eigen::setNbThreads(1);
  state.counters["inner_iterations"] = iterations / double(state.iterations());
}

template <class Pair>
void pair_elementwise(benchmark::State& state, Pair pair, bool signal) {
  bilevel::random_source random(2);
  const bilevel::Matrix<S> a =
      bilevel::Matrix<S>::NullaryExpr(256, 50, [&] { return S(random.normal()); });
  bilevel::Matrix<S> z(256, 50), g = bilevel::Matrix<S>::Constant(256, 50, S(0.1)), delta(256, 50);
  bilevel::activate<S>(pair, a, z);
  for (auto _ : state) {
    if (signal)
      bilevel::fenchel_signal<S>(pair, a, z, g, S(0.01), delta);
    else
      bilevel::activate<S>(pair, a, z);
    benchmark::ClobberMemory();
  }
  state.counters["elements"] = double(a.size());
}

void idx_loading(benchmark::State& state) {
  const std::filesystem::path file = std::filesystem::temp_directory_path() /
                                     ("bilevel-bench-" + std::to_string(getpid()) + ".idx");
  std::vector<std::uint8_t> pixels(std::size_t(10000) * 28 * 28);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = std::uint8_t(i * 31);
  bilevel::write_idx(file, {10000, 28, 28}, pixels);
  for (auto _ : state) benchmark::DoNotOptimize(bilevel::read_idx(file));
  std::filesystem::remove(file);
  state.SetBytesProcessed(std::int64_t(state.iterations()) * std::int64_t(pixels.size()));
}

constexpr auto cold = bilevel::inner_start::forward;
constexpr auto warm = bilevel::inner_start::first_order;

/// `Method` with its defaults but the given spacing (its weight on the couplings for MAC, LPOM
/// and FLN) and start.
template <class Method>
Method at_spacing(S spacing, bilevel::inner_start start) {
  auto config = Method().config();
  if constexpr (requires { config.beta; }) config.beta = spacing;
  if constexpr (requires { config.spacing; }) config.spacing = spacing;
  if constexpr (requires { config.mu; }) config.mu = spacing;
  if constexpr (requires { config.lambda; }) config.lambda = {spacing};
  config.start = start;
  return Method(config);
}

using bilevel::pcn_inference;

/// PCN with another inference dynamics than its default, Anderson mixing (docs/methods.md §5.4).
bilevel::pcn<S> with_inference(const bilevel::pcn<S>& method, pcn_inference inference) {
  auto config = method.config();
  config.inference = inference;
  return bilevel::pcn<S>(config);
}

}  // namespace

#define METHOD_STEP(name, method, native)                                             \
  BENCHMARK_CAPTURE(step, name, method, native)                                        \
      ->Args({50, 1})                                                                  \
      ->Unit(benchmark::kMicrosecond)
METHOD_STEP(bp, bilevel::bp<S>{}, false)
    ->Args({128, 1})
    ->Args({512, 1})
    ->Args({50, 2})
    ->Args({128, 2})
    ->Args({512, 2});
METHOD_STEP(fenbp, bilevel::fenchel_bp<S>(0.01f), false)
    ->Args({128, 1})
    ->Args({512, 1})
    ->Args({50, 2})
    ->Args({128, 2})
    ->Args({512, 2});
METHOD_STEP(ep, bilevel::ep<S>{}, false);
METHOD_STEP(zil, bilevel::pcn<S>::zil(), false);
// The methods with inner solvers at the trainer's default spacings (examples/mnist_mlp: CHL
// beta 0.1, PCN s = 1, MAC mu 10, LPOM and FLN lambda 10), each started from the forward pass
// (cold) and from the first-order start of docs/methods.md §5.6b (warm); the trainer's default
// is cold for CHL, PCN and MAC, warm for LPOM and FLN. PCN (mixed steps) also with plain steps
// and with momentum.
METHOD_STEP(chl_cold, at_spacing<bilevel::chl<S>>(0.1f, cold), false);
METHOD_STEP(chl_warm, at_spacing<bilevel::chl<S>>(0.1f, warm), false);
METHOD_STEP(pcn_cold, at_spacing<bilevel::pcn<S>>(1.0f, cold), false);
METHOD_STEP(pcn_warm, at_spacing<bilevel::pcn<S>>(1.0f, warm), false);
METHOD_STEP(pcn_plain_cold,
            with_inference(at_spacing<bilevel::pcn<S>>(1.0f, cold), pcn_inference::plain),
            false);
METHOD_STEP(pcn_plain_warm,
            with_inference(at_spacing<bilevel::pcn<S>>(1.0f, warm), pcn_inference::plain),
            false);
METHOD_STEP(pcn_accelerated_cold,
            with_inference(at_spacing<bilevel::pcn<S>>(1.0f, cold), pcn_inference::momentum),
            false);
METHOD_STEP(pcn_accelerated_warm,
            with_inference(at_spacing<bilevel::pcn<S>>(1.0f, warm), pcn_inference::momentum),
            false);
METHOD_STEP(mac_cold, at_spacing<bilevel::mac<S>>(10.0f, cold), false);
METHOD_STEP(mac_warm, at_spacing<bilevel::mac<S>>(10.0f, warm), false);
METHOD_STEP(lpom_cold, at_spacing<bilevel::lpom<S>>(10.0f, cold), false);
METHOD_STEP(lpom_warm, at_spacing<bilevel::lpom<S>>(10.0f, warm), false);
METHOD_STEP(fln_cold, at_spacing<bilevel::fln<S>>(10.0f, cold), false);
METHOD_STEP(fln_warm, at_spacing<bilevel::fln<S>>(10.0f, warm), false);
METHOD_STEP(altmin, bilevel::altmin<S>{}, true);

BENCHMARK_CAPTURE(pair_elementwise, relu_f, bilevel::relu{}, false);
BENCHMARK_CAPTURE(pair_elementwise, relu_signal, bilevel::relu{}, true);
BENCHMARK_CAPTURE(pair_elementwise, sigmoid_f, bilevel::sigmoid{}, false);
BENCHMARK_CAPTURE(pair_elementwise, sigmoid_signal, bilevel::sigmoid{}, true);
BENCHMARK_CAPTURE(pair_elementwise, tanh_f, bilevel::tanh_pair{}, false);
BENCHMARK_CAPTURE(pair_elementwise, tanh_signal, bilevel::tanh_pair{}, true);
BENCHMARK_CAPTURE(pair_elementwise, softmax_f, bilevel::softmax{}, false);
BENCHMARK_CAPTURE(pair_elementwise, softmax_signal, bilevel::softmax{}, true);
BENCHMARK(idx_loading)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
