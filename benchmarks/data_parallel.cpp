// Data-parallel training steps over MPI (bilevel/mpi/), run by mpirun on two processes: the
// Fenchel BP paper's MLP (784-256-128-64-10, float, one thread per process) at global batches
// 50 and 512, on one process (the plain method, the other process idle) and on two
// (mpi::data_parallel, each its half of the batch), so that scripts/benchmark-mpi.sh can report
// the speedup and the share of a step spent in MPI_Allreduce from timings of the same run.
// AltMin's native step (its weight steps reduced layer by layer) is measured the same way.
//
// Every process runs every benchmark with the same fixed iteration count, since the steps on
// two processes communicate; only rank 0 reports.

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "bilevel/bilevel.hpp"
#include "bilevel/mpi/mpi.hpp"
#include "same_start.hpp"

namespace {

using S = float;
using bilevel::Index;
namespace mpi = bilevel::mpi;

/// The processes of a benchmark: the first `count` of the job (MPI_Comm_split), or none on
/// the others.
class subset {
 public:
  explicit subset(int count) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm split = MPI_COMM_NULL;
    MPI_Comm_split(MPI_COMM_WORLD, rank < count ? 0 : MPI_UNDEFINED, rank, &split);
    if (split != MPI_COMM_NULL) {
      processes_ = std::make_unique<mpi::communicator>(split);
      MPI_Comm_free(&split);
    }
  }
  const mpi::communicator* processes() const { return processes_.get(); }

 private:
  std::unique_ptr<mpi::communicator> processes_;
};

struct fixture {
  bilevel::mlp<S, bilevel::relu> net;
  bilevel::Matrix<S> x, y;
  bilevel::Vector<S> gradient;
  bilevel::adam<S> optimizer;

  fixture(const std::vector<Index>& sizes, Index batch, S learning_rate)
      : net(bilevel::make_mlp<S, bilevel::relu>(sizes)),
        optimizer({.learning_rate = learning_rate}, net.parameter_count(), net.weight_count()) {
    bilevel::random_source random(1);  // the same batch on every process
    net.initialize(bilevel::init_scheme::glorot_uniform, random);
    x = bilevel::Matrix<S>::NullaryExpr(sizes.front(), batch, [&] { return S(random.uniform()); });
    y = bilevel::Matrix<S>::Zero(sizes.back(), batch);
    for (Index j = 0; j < batch; ++j) y(Index(random.below(std::uint64_t(sizes.back()))), j) = 1;
  }
};

/// MPI_Barrier without spinning: a process left out of a benchmark must not take CPU time
/// (nor, on hyperthreads, the core) from the one being timed.
void sleeping_barrier() {
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Ibarrier(MPI_COMM_WORLD, &request);
  for (int done = 0; MPI_Test(&request, &done, MPI_STATUS_IGNORE), !done;)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

/// One training step per iteration: gradient and Adam, or the method's native step.
template <class Stepper>
void take_step(Stepper& stepper, fixture& f, bool native) {
  if constexpr (bilevel::StepMethod<Stepper, decltype(f.net)>) {
    if (native) {
      stepper.train_step(f.net, f.x, f.y);
      return;
    }
  }
  if constexpr (bilevel::GradientMethod<Stepper, decltype(f.net)>) {
    stepper.gradient(f.net, f.x, f.y, f.gradient);
    f.optimizer.step(f.net.parameters(), f.gradient);
  }
}

/// range(0): global batch; range(1): processes (1: the plain method on rank 0).
template <class Method>
void step(benchmark::State& state, Method method, std::vector<Index> sizes, bool native) {
  const Index batch = state.range(0);
  const int count = int(state.range(1));
  const subset group(count);
  Eigen::setNbThreads(1);
  if (group.processes() == nullptr) {  // not in this benchmark: keep the iteration count
    for (auto _ : state) benchmark::DoNotOptimize(batch);
  } else {
    fixture f(sizes, batch, S(1e-4));
    mpi::data_parallel<S, Method> parallel(method, *group.processes(), 0);
    const auto run = [&] {
      if (count == 1)
        take_step(method, f, native);
      else
        take_step(parallel, f, native);
    };
    for (int warm_up = 0; warm_up < 3; ++warm_up) run();
    same_start start(f.net.parameters(), f.optimizer, method);
    const double communicated = parallel.communication_seconds();
    double seconds = 0;
    for (auto _ : state) {
      start.restore(state);
      const auto begin = std::chrono::steady_clock::now();
      run();
      benchmark::ClobberMemory();
      seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    }
    state.counters["communication_share"] =
        (parallel.communication_seconds() - communicated) / seconds;
    state.counters["parameters"] = double(f.net.parameter_count());
  }
  sleeping_barrier();
}

const std::vector<Index> paper_mlp = {784, 256, 128, 64, 10};

void register_all() {
  const auto add = [](const char* name, auto method, std::vector<Index> sizes, bool native,
                      std::vector<std::pair<Index, Index>> batches_and_iterations) {
    for (const auto& [batch, iterations] : batches_and_iterations)
      for (const Index processes : {1, 2})
        benchmark::RegisterBenchmark(name, step<decltype(method)>, method, sizes, native)
            ->Args({batch, processes})
            ->Iterations(iterations)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
  };
  add("bp", bilevel::bp<S>(), paper_mlp, false, {{50, 2000}, {512, 300}});
  add("fenbp", bilevel::fenchel_bp<S>(0.01f), paper_mlp, false, {{50, 2000}, {512, 300}});
  add("altmin_native", bilevel::altmin<S>(), {784, 100, 100, 10}, true, {{200, 500}});
}

/// Rank 0 reports; the other processes run silently.
class silent_reporter : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  const mpi::session session(argc, argv);
  benchmark::Initialize(&argc, argv);
  register_all();
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    silent_reporter silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
  return 0;
}
