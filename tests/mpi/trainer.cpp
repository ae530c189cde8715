// The mnist_mlp trainer under mpirun on two processes, on the synthetic problem of
// tests/trainer.cpp: it trains one model as one process does, rank 0 alone prints and writes
// checkpoints, a resumed run continues exactly, and a process that fails or disagrees ends the
// whole job with its message instead of leaving the others waiting.

#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <cstdint>
#include <string>
#include <vector>

#include "trainer_runs.hpp"

using namespace bilevel::testing;

namespace {

/// mpirun with `processes` copies of the trainer (the trainer's path follows).
std::string mpirun(int processes) {
  return std::string(BILEVEL_MPIEXEC) + " -np " + std::to_string(processes);
}

/// mpirun starting rank 0 with `first` flags and rank 1 with `second` (MPI's MPMD form).
raw_result run_two_different(const std::string& first, const std::string& second) {
  return run_raw(second,
                 mpirun(1) + " " + BILEVEL_MNIST_MLP_PATH + " " + first + " : -np 1");
}

}  // namespace

TEST_CASE("two processes train as one process does, and only rank 0 prints", "[mpi][trainer]") {
  data_directory data("mpi-train");
  const std::string flags =
      "--data " + data.path.string() + small_run + " --method bp --epochs 3 --lr 0.003";
  const run_result single = run_trainer(flags);
  const run_result two = run_trainer(flags, mpirun(2));
  INFO(two.error);
  REQUIRE(single.status == 0);
  REQUIRE(two.status == 0);
  REQUIRE(two.lines.size() == 4);  // three epochs and the summary, from rank 0 alone
  CHECK(two.lines.back()["processes"] == 2);
  CHECK(single.lines.back()["processes"] == 1);
  // The same model up to float rounding of the sums, so nearly the same errors.
  const double single_error = single.lines.back()["final_test_error"];
  const double two_error = two.lines.back()["final_test_error"];
  CHECK(std::abs(single_error - two_error) < 0.02);
  CHECK(two_error < 0.5 * double(two.lines.back()["initial_test_error"]));
  // One configuration line on stderr, naming both processes.
  const auto first = two.error.find("2 processes");
  CHECK(first != std::string::npos);
  CHECK(two.error.find("2 processes", first + 1) == std::string::npos);
}

TEST_CASE("two processes train a CNN as one process does", "[mpi][trainer][conv]") {
  data_directory data("mpi-cnn");
  const std::string flags = "--data " + data.path.string() +
                            " --architecture conv4k3p1-pool2-dense10 --train-samples 2000"
                            " --validation 500 --epochs 3 --batch 20 --method fenbp";
  const run_result single = run_trainer(flags);
  const run_result two = run_trainer(flags, mpirun(2));
  INFO(two.error);
  REQUIRE(single.status == 0);
  REQUIRE(two.status == 0);
  CHECK(two.lines.back()["processes"] == 2);
  CHECK(two.lines.back()["layers"] == "conv4k3p1-pool2-dense10");
  const double single_error = single.lines.back()["final_test_error"];
  const double two_error = two.lines.back()["final_test_error"];
  CHECK(std::abs(single_error - two_error) < 0.02);
  CHECK(two_error < double(two.lines.back()["initial_test_error"]) - 0.2);
}

TEST_CASE("two processes take native steps of a block-coordinate method", "[mpi][trainer]") {
  data_directory data("mpi-native");
  const std::string flags = "--data " + data.path.string() +
                            " --layers 16,32,10 --train-samples 2000 --validation 500 --epochs 4"
                            " --method altmin --batch 20";
  const run_result single = run_trainer(flags), two = run_trainer(flags, mpirun(2));
  INFO(two.error);
  REQUIRE(single.status == 0);
  REQUIRE(two.status == 0);
  CHECK(two.lines.back()["step_mode"] == "native");
  const double single_error = single.lines.back()["final_test_error"];
  const double two_error = two.lines.back()["final_test_error"];
  CHECK(std::abs(single_error - two_error) < 0.02);
  CHECK(two_error < double(two.lines.back()["initial_test_error"]) - 0.2);
  // Native steps need a sample of every batch on each process, the last batch included.
  const raw_result uneven = run_raw("--data " + data.path.string() + small_run +
                                        " --method altmin --train-samples 4001 --batch 50",
                                    mpirun(2));
  CHECK(uneven.status == 2);
  CHECK_THAT(uneven.error, Catch::Contains("the last batch") &&
                               Catch::Contains(">= the number of processes (2)"));
}

TEST_CASE("a two-process run resumed with --resume continues exactly", "[mpi][trainer]") {
  data_directory data("mpi-resume");
  const std::string base =
      "--data " + data.path.string() + small_run + " --method fenbp --quiet";
  const fs::path half = data.path / "half.ckpt";
  require_exact_resume(base, half, mpirun(2));
  // The checkpoint is an ordinary one: a single process can continue from it.
  CHECK(run_trainer(base + " --epochs 3 --resume " + half.string()).status == 0);
}

TEST_CASE("a process that fails ends the whole job with its message", "[mpi][trainer]") {
  data_directory data("mpi-fail");
  const std::string good = "--data " + data.path.string() + small_run + " --epochs 2";
  // Rank 1 cannot read its data while rank 0 goes on to wait for it.
  const raw_result missing =
      run_two_different(good, good + " --data " + (data.path / "nowhere").string());
  CHECK(missing.status != 0);
  CHECK_THAT(missing.error, Catch::Contains("mnist_mlp (rank 1 of 2): ") &&
                                Catch::Contains("nowhere"));
  // Processes started with different flags refuse to train together, naming the flags.
  const raw_result flags = run_two_different(good, good + " --lr 0.01 --seed 5");
  CHECK(flags.status == 2);
  CHECK_THAT(flags.error, Catch::Contains("different training flags: --lr, --seed ("));
  // Test files that differ between the processes would mix two test sets in one error.
  data_directory other("mpi-other-test");
  const fs::path test_labels = other.path / "t10k-labels-idx1-ubyte";
  std::vector<std::uint8_t> labels(1000);
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = std::uint8_t(i % 10);
  bilevel::write_idx(test_labels, {1000}, labels);
  const raw_result test_set =
      run_two_different(good, good + " --data " + other.path.string());
  CHECK(test_set.status == 2);
  CHECK_THAT(test_set.error, Catch::Contains("disagree on the test labels (--data)"));
}
