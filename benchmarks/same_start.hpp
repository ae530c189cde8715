#pragma once
// Every timed training step of the benchmarks starts from the same state (parameters, optimizer,
// method), put back untimed. Trained on one batch for thousands of steps, a net would fit it
// until its errors are denormal floats, Adam's first moments of weights that get no gradient
// (dead ReLUs) would decay into denormals after some 800 steps, both many times slower than
// normal floats, and the iterative methods would stop their inner solvers early: the work per
// step would depend on how many steps the benchmark happens to run.

#include <benchmark/benchmark.h>

#include <tuple>

/// Copies of `objects` taken at construction; restore() puts them back with the timer paused.
/// Take them after a first step, so that the methods' buffers are sized (putting back a fresh
/// method would make every step allocate them again).
template <class... Objects>
class same_start {
 public:
  explicit same_start(Objects&... objects) : objects_(objects...), saved_(objects...) {}

  void restore(benchmark::State& state) {
    state.PauseTiming();
    objects_ = saved_;
    state.ResumeTiming();
  }

 private:
  std::tuple<Objects&...> objects_;
  std::tuple<Objects...> saved_;
};
