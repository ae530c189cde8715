// Data-parallel training over MPI (bilevel/mpi/), run by mpirun on several processes. Every
// process builds the same program and draws the same global batches (same seeds); the
// data-parallel run must match one process training on the whole batches, which every process
// also computes for itself as the reference.

#include <catch2/catch.hpp>

#include <cstdint>
#include <span>
#include <vector>

#include "bilevel/bilevel.hpp"
#include "bilevel/mpi/mpi.hpp"
#include "helpers.hpp"

using namespace bilevel;

namespace {

const mpi::communicator& world() {
  static const mpi::communicator processes;
  return processes;
}

/// ReLU hidden layers; EP needs a bounded pair there (methods/ep.hpp).
template <class S, class Hidden = relu>
using test_net = mlp<S, Hidden>;

template <class S, class Hidden = relu>
test_net<S, Hidden> make_net() {
  auto net = make_mlp<S, Hidden>({12, 16, 8, 4});
  random_source random(3);
  net.initialize(init_scheme::glorot_uniform, random);
  return net;
}

template <class S>
struct batch {
  Matrix<S> x, y;
};

/// The same batches on every process (same seed); the class of a sample is the largest entry
/// of a fixed linear map of it, so there is something to learn.
template <class S>
std::vector<batch<S>> make_batches(Index size, int count) {
  random_source random(11);
  const Matrix<S> teacher = testing::random_matrix<S>(random, 4, 12);
  std::vector<batch<S>> batches;
  for (int i = 0; i < count; ++i) {
    batch<S> b{testing::random_matrix<S>(random, 12, size), Matrix<S>::Zero(4, size)};
    const Matrix<S> scores = teacher * b.x;
    for (Index j = 0; j < size; ++j) {
      Index label = 0;
      scores.col(j).maxCoeff(&label);
      b.y(label, j) = 1;
    }
    batches.push_back(b);
  }
  return batches;
}

/// Batch-mean loss of the forward pass over `batches`.
template <class S>
double mean_loss(const test_net<S>& net, const std::vector<batch<S>>& batches) {
  forward_state<S> state;
  double total = 0;
  for (const auto& b : batches) {
    net.forward(b.x, state);
    total += double(net.loss_values(state.z.back(), b.y).mean());
  }
  return total / double(batches.size());
}

template <class S>
std::uint32_t checksum(const Vector<S>& values) {
  return detail::crc32_of(
      std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(values.data()),
                                    std::size_t(values.size()) * sizeof(S)));
}

template <class S>
S largest_difference(const Vector<S>& a, const Vector<S>& b) {
  return (a - b).cwiseAbs().maxCoeff();
}

/// Steps of `method` on the whole batches (one process) and of a copy of it wrapped in
/// mpi::data_parallel (every process its shard), both with Adam from the same start: the
/// reports must agree and the parameters differ by at most `tolerance`, and every process
/// must hold bitwise the same parameters. `native`: the method's own train_step.
template <class S, class Method, class Hidden = relu>
void require_single_process_result(const Method& method, Index batch_size, bool native,
                                   S tolerance, int steps = 4) {
  using net_type = test_net<S, Hidden>;
  auto single = make_net<S, Hidden>(), parallel = single;
  Method single_method = method, parallel_method = method;
  mpi::data_parallel<S, Method> data_parallel(parallel_method, world(), 1);
  adam<S> single_adam({}, single.parameter_count(), single.weight_count());
  adam<S> parallel_adam = single_adam;
  Vector<S> single_gradient, parallel_gradient;
  for (const auto& b : make_batches<S>(batch_size, steps)) {
    step_report expected, actual;
    if constexpr (StepMethod<Method, net_type>) {
      if (native) {
        expected = single_method.train_step(single, b.x, b.y);
        actual = data_parallel.train_step(parallel, b.x, b.y);
      }
    }
    if constexpr (GradientMethod<Method, net_type>) {
      if (!native) {
        expected = single_method.gradient(single, b.x, b.y, single_gradient);
        actual = data_parallel.gradient(parallel, b.x, b.y, parallel_gradient);
        CHECK(largest_difference(single_gradient, parallel_gradient) <= tolerance);
        single_adam.step(single.parameters(), single_gradient);
        parallel_adam.step(parallel.parameters(), parallel_gradient);
      }
    }
    CHECK(actual.loss == Approx(expected.loss).epsilon(1e-5));
    CHECK(actual.correct == expected.correct);
  }
  INFO(method.name() << ", batch " << batch_size << (native ? ", native steps" : ""));
  CHECK(largest_difference(single.parameters(), parallel.parameters()) <= tolerance);
  CHECK(largest_difference(single.parameters(), make_net<S, Hidden>().parameters()) >
        100 * tolerance);
  CHECK(world().same_everywhere(checksum(parallel.parameters())));
}

}  // namespace

TEST_CASE("shards split a batch into contiguous blocks in rank order, sizes within one",
          "[mpi]") {
  for (const Index size : {0, 1, 2, 3, 7, 50, 51}) {
    for (const int processes : {1, 2, 3, 5}) {
      Index next = 0, smallest = size, largest = 0;
      for (int rank = 0; rank < processes; ++rank) {
        const mpi::shard part = mpi::shard_of(size, rank, processes);
        CHECK(part.begin == next);
        next = part.begin + part.count;
        smallest = std::min(smallest, part.count);
        largest = std::max(largest, part.count);
      }
      CHECK(next == size);
      CHECK(largest - smallest <= 1);
    }
  }
}

TEST_CASE("the communicator sums, compares and broadcasts across the processes", "[mpi]") {
  const int P = world().size(), rank = world().rank();
  REQUIRE(P >= 2);  // the suite is meant for mpirun -np 2 or more
  std::int64_t counts[2] = {rank + 1, 1};
  world().sum(std::span<std::int64_t>(counts));
  CHECK(counts[0] == P * (P + 1) / 2);
  CHECK(counts[1] == P);
  float values[3] = {0.5f, float(rank), -1.0f};
  world().sum(std::span<float>(values));
  CHECK(values[0] == 0.5f * float(P));
  CHECK(values[2] == -float(P));
  CHECK(world().same_everywhere(7));
  CHECK_FALSE(world().same_everywhere(std::uint64_t(rank)));
  CHECK(world().all(true));
  CHECK_FALSE(world().all(rank != P - 1));
  const std::vector<std::uint8_t> sent =
      rank == 0 ? std::vector<std::uint8_t>{1, 2, 3, 250} : std::vector<std::uint8_t>{9};
  CHECK(world().broadcast(sent) == std::vector<std::uint8_t>{1, 2, 3, 250});
  CHECK_THROWS_WITH(world().require_same(std::uint64_t(rank), "setup", "the flags"),
                    Catch::Contains("setup: the ") &&
                        Catch::Contains(" processes disagree on the flags"));
}

TEST_CASE("data-parallel BP, Fenchel BP, PCN and EP equal one process on the global batches",
          "[mpi]") {
  for (const Index batch : {Index(50), Index(7)}) {  // 7: shards of unequal sizes
    require_single_process_result<float>(bp<float>(), batch, false, 2e-6f);
    require_single_process_result<float>(fenchel_bp<float>(0.5f), batch, false, 2e-6f);
    // At ReLU kinks the steps chatter up to the cap, where the rate halvings of overshooting
    // samples, momentum and mixing make the state depend on rounding: on ReLU the fixed-rate
    // plain steps, and the defaults (mixing) and momentum on a smooth net (PCN's trainer
    // default, sigmoid).
    const pcn<float> fixed_rate({.inference = pcn_inference::plain, .rate_halvings = 0});
    require_single_process_result<float>(fixed_rate, batch, false, 2e-6f);
    require_single_process_result<float, pcn<float>, sigmoid>(pcn<float>(), batch, false, 2e-6f);
    const pcn<float> momentum({.inference = pcn_inference::momentum});
    require_single_process_result<float, pcn<float>, sigmoid>(momentum, batch, false, 2e-6f);
    require_single_process_result<double, ep<double>, hard_sigmoid>(ep<double>(), batch, false,
                                                                    1e-12);
  }
}

TEST_CASE("data-parallel native steps of AltMin and MAC equal one process", "[mpi]") {
  for (const Index batch : {Index(50), Index(7)}) {
    require_single_process_result<float>(altmin<float>(), batch, true, 2e-6f);
    mac<double>::settings settings;
    // A fixed number of per-sample Z-steps: a tolerance that no sample meets within the cap.
    settings.z_stopping = {1e-12, 8};
    require_single_process_result<double>(mac<double>(settings), batch, true, 1e-10);
  }
}

TEST_CASE("data-parallel native LPOM and FLN steps keep the processes equal and learn", "[mpi]") {
  // Their z-blocks adapt one step size per batch, so a shard's inference differs from the whole
  // batch's within the solver's tolerance; the weight steps are still averaged exactly.
  const auto batches = make_batches<double>(40, 30);
  const auto learns = [&](auto method) {
    auto net = make_net<double>();
    mpi::data_parallel<double, decltype(method)> parallel(method, world(), 1);
    const double before = mean_loss(net, batches);
    for (int epoch = 0; epoch < 5; ++epoch)
      for (const auto& b : batches) parallel.train_step(net, b.x, b.y);
    CHECK(world().same_everywhere(checksum(net.parameters())));
    return std::pair(before, mean_loss(net, batches));
  };
  lifted_settings<double> settings;
  settings.lambda = {10.0};
  const auto [lpom_before, lpom_after] = learns(lpom<double>(settings));
  CHECK(lpom_after < 0.8 * lpom_before);
  const auto [fln_before, fln_after] = learns(fln<double>(settings));
  CHECK(fln_after < 0.8 * fln_before);
}

TEST_CASE("processes whose parameters diverged are found by the parameter check", "[mpi]") {
  auto net = make_net<float>();
  bp<float> method;
  mpi::data_parallel<float, bp<float>> parallel(method, world(), 2);
  const auto batches = make_batches<float>(10, 3);
  Vector<float> gradient;
  parallel.gradient(net, batches[0].x, batches[0].y, gradient);  // checked: equal
  if (world().rank() == 1) net.parameters()(0) += 1e-3f;
  parallel.gradient(net, batches[1].x, batches[1].y, gradient);  // not checked
  CHECK_THROWS_WITH(parallel.gradient(net, batches[2].x, batches[2].y, gradient),
                    Catch::Contains("parameters differ before step 3"));
}

TEST_CASE("broadcast_state gives every process rank 0's program, optimizer and method", "[mpi]") {
  auto net = make_mlp<float, relu>({12, 16, 8, 4});
  random_source random(100 + std::uint64_t(world().rank()));  // a different start on each
  net.initialize(init_scheme::glorot_uniform, random);
  adam<float> optimizer({}, net.parameter_count(), net.weight_count());
  Vector<float> gradient = Vector<float>::Constant(net.parameter_count(), float(world().rank()));
  optimizer.step(net.parameters(), gradient);
  mac<float> method;
  method.set_mu(float(1 + world().rank()));
  REQUIRE_FALSE(world().same_everywhere(checksum(net.parameters())));

  mpi::broadcast_state(world(), net, optimizer, method);
  CHECK(world().same_everywhere(checksum(net.parameters())));
  CHECK(world().same_everywhere(checksum(optimizer.second_moment())));
  CHECK(method.mu() == 1.0f);

  // A process whose program has other sizes cannot take the state over: every process throws.
  auto other = make_mlp<float, relu>({12, world().rank() == 0 ? 16 : 15, 8, 4});
  CHECK_THROWS_AS(mpi::broadcast_state(world(), other), config_error);
}

TEST_CASE("the sharded classification error equals the single-process one", "[mpi]") {
  const auto net = make_net<float>();
  random_source random(5);
  Matrix<float> x = testing::random_matrix<float>(random, 12, 101);
  std::vector<int> labels(101);
  for (int& label : labels) label = int(random.below(4));
  const auto set = make_dataset<float>(x, labels, 4);
  bp<float> method;
  CHECK(mpi::classification_error(world(), net, set, method) ==
        classification_error(net, set, method));
}

TEST_CASE("a batch smaller than the number of processes", "[mpi]") {
  const auto batches = make_batches<float>(1, 1);
  // Gradient methods: the processes without a sample contribute nothing.
  require_single_process_result<float>(bp<float>(), 1, false, 2e-6f);
  // Native steps need a sample on every process.
  auto net = make_net<float>();
  altmin<float> method;
  mpi::data_parallel<float, altmin<float>> parallel(method, world());
  CHECK_THROWS_WITH(parallel.train_step(net, batches[0].x, batches[0].y),
                    Catch::Contains("mpi::data_parallel::train_step: the batch size must be >= "
                                    "the number of processes"));
}

TEST_CASE("the README's data-parallel example trains one model on every process", "[mpi]") {
  const auto batches = make_batches<float>(600, 2);
  const auto to_set = [](const batch<float>& b) {
    std::vector<int> labels(std::size_t(b.y.cols()));
    for (Index j = 0; j < b.y.cols(); ++j) b.y.col(j).maxCoeff(&labels[std::size_t(j)]);
    return make_dataset<float>(b.x, labels, b.y.rows());
  };
  const dataset<float> train_set = to_set(batches[0]), test_set = to_set(batches[1]);
  double error = 1;

  // --- README MPI example begins ---
  // main() holds `bilevel::mpi::session mpi(argc, argv);` for MPI's lifetime.
  const mpi::communicator processes;  // a private duplicate of MPI_COMM_WORLD
  auto net = make_mlp<float, relu>({12, 16, 4});
  random_source random(1 + std::uint64_t(processes.rank()));  // any start: rank 0's is shared
  net.initialize(init_scheme::glorot_uniform, random);
  adam<float> optimizer({.learning_rate = 1e-2f}, net.parameter_count(), net.weight_count());
  fenchel_bp<float> method(0.01f);
  mpi::broadcast_state(processes, net, optimizer, method);
  mpi::data_parallel<float, fenchel_bp<float>> parallel(method, processes);
  trainer loop(net, parallel, optimizer, 50, /*seed, the same everywhere*/ 7);
  for (int epoch = 0; epoch < 20; ++epoch) loop.run_epoch(train_set);
  error = mpi::classification_error(processes, net, test_set, method);
  // --- README MPI example ends ---

  CHECK(error < 0.15);
  CHECK(processes.same_everywhere(checksum(net.parameters())));
}
