#pragma once
// Runs of the mnist_mlp trainer for tests: a synthetic 10-class problem written as idx files,
// and the trainer started with flags (optionally under a launcher such as mpirun), its stdout
// parsed as JSON lines and its stderr kept. Needs BILEVEL_MNIST_MLP_PATH, the trainer's path.

#include <catch2/catch.hpp>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numbers>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include "bilevel/core/random.hpp"
#include "bilevel/io/idx.hpp"

namespace bilevel::testing {

namespace fs = std::filesystem;
using json = nlohmann::json;


/// Points (u, v) in the unit disc, 16 pixels that are linear in (u, v); the class is the angular
/// sector (5 of them) times 2 plus the parity of the radial band (r < 0.4, < 0.7, < 0.95). The
/// inner and outer bands share a class with the middle band between them, so the classes are not
/// convex and no linear classifier separates them. Points near a boundary are dropped.
struct synthetic_set {
  std::vector<std::uint8_t> pixels;
  std::vector<std::uint8_t> labels;
};

inline synthetic_set make_synthetic(random_source& random, int count) {
  synthetic_set set;
  while (int(set.labels.size()) < count) {
    const double u = random.uniform(-1, 1), v = random.uniform(-1, 1);
    const double radius = std::hypot(u, v);
    const double turn = (std::atan2(v, u) + std::numbers::pi) / (2 * std::numbers::pi) * 5;
    const double sector_margin = std::abs(turn - std::round(turn));
    if (radius > 0.95 || radius < 0.1 || std::abs(radius - 0.4) < 0.04 ||
        std::abs(radius - 0.7) < 0.04 || sector_margin < 0.06)
      continue;
    const int band = radius < 0.4 ? 0 : radius < 0.7 ? 1 : 2;
    const int label = 2 * std::min(int(turn), 4) + band % 2;
    for (int p = 0; p < 16; ++p) {
      const double angle = std::numbers::pi * p / 16;
      const double value = 127.5 + 127 * (u * std::cos(angle) + v * std::sin(angle)) / 1.5;
      set.pixels.push_back(std::uint8_t(std::lround(value)));
    }
    set.labels.push_back(std::uint8_t(label));
  }
  return set;
}

struct data_directory {
  fs::path path;
  explicit data_directory(const std::string& name) {
    path = fs::temp_directory_path() / ("bilevel-trainer-" + name);
    fs::remove_all(path);
    fs::create_directories(path);
    random_source random(101);
    const synthetic_set train = make_synthetic(random, 6000), test = make_synthetic(random, 1000);
    write_idx(path / "train-images-idx3-ubyte", {6000, 4, 4}, train.pixels);
    write_idx(path / "train-labels-idx1-ubyte", {6000}, train.labels);
    write_idx(path / "t10k-images-idx3-ubyte", {1000, 4, 4}, test.pixels);
    write_idx(path / "t10k-labels-idx1-ubyte", {1000}, test.labels);
  }
  ~data_directory() { fs::remove_all(path); }
};

struct run_result {
  int status;
  std::vector<json> lines;
  std::string error;
};

struct raw_result {
  int status;
  std::string output;
  std::string error;
};

/// Runs mnist_mlp with `arguments` (after `launcher`, if given), keeping stdout and stderr.
inline raw_result run_raw(const std::string& arguments, const std::string& launcher = "") {
  // ctest runs test cases in parallel processes: each call gets its own stderr file.
  static int calls = 0;
  const fs::path err = fs::temp_directory_path() /
                       ("bilevel-trainer-stderr-" + std::to_string(getpid()) + "-" +
                        std::to_string(++calls) + ".txt");
  const std::string command =
      launcher + " " + std::string(BILEVEL_MNIST_MLP_PATH) + " " + arguments + " 2>" + err.string();
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  raw_result result{};
  std::array<char, 4096> buffer{};
  while (std::fgets(buffer.data(), int(buffer.size()), pipe)) result.output += buffer.data();
  const int status = pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::FILE* file = std::fopen(err.string().c_str(), "r");
  if (file) {
    while (std::fgets(buffer.data(), int(buffer.size()), file)) result.error += buffer.data();
    std::fclose(file);
  }
  fs::remove(err);
  return result;
}

/// Runs mnist_mlp with `arguments`; stdout is parsed line by line as JSON, stderr kept.
inline run_result run_trainer(const std::string& arguments, const std::string& launcher = "") {
  const raw_result raw = run_raw(arguments, launcher);
  run_result result{raw.status, {}, raw.error};
  std::size_t start = 0;
  while (start < raw.output.size()) {
    const std::size_t end = raw.output.find('\n', start);
    result.lines.push_back(json::parse(raw.output.substr(start, end - start)));
    start = end == std::string::npos ? raw.output.size() : end + 1;
  }
  return result;
}

/// The epoch lines without their timings (which differ from run to run).
inline std::vector<json> epochs_without_timing(const run_result& run) {
  std::vector<json> lines;
  for (json line : run.lines) {
    if (line.contains("summary")) continue;
    line.erase("seconds");
    line.erase("samples_per_s");
    lines.push_back(line);
  }
  return lines;
}

/// A run of 4 epochs straight (`flags` + `straight_flags`) and the same run as 2 epochs saved
/// to `checkpoint` and a resumed run to epoch 4, all after `launcher`.
struct resume_runs {
  run_result full, first, rest;
};

/// Runs resume_runs and requires the resumed run's epochs to equal the straight run's.
inline resume_runs require_exact_resume(const std::string& flags, const fs::path& checkpoint,
                                        const std::string& launcher = "",
                                        const std::string& straight_flags = "") {
  resume_runs runs{run_trainer(flags + " --epochs 4" + straight_flags, launcher),
                   run_trainer(flags + " --epochs 2 --save " + checkpoint.string(), launcher),
                   run_trainer(flags + " --epochs 4 --resume " + checkpoint.string(), launcher)};
  INFO(runs.full.error << runs.first.error << runs.rest.error);
  REQUIRE(runs.full.status == 0);
  REQUIRE(runs.first.status == 0);
  REQUIRE(runs.rest.status == 0);
  std::vector<json> joined = epochs_without_timing(runs.first);
  for (const json& line : epochs_without_timing(runs.rest)) joined.push_back(line);
  REQUIRE(joined.size() == 4);
  CHECK(joined == epochs_without_timing(runs.full));
  return runs;
}

inline const std::string small_run = " --layers 16,64,64,10 --train-samples 5000 --validation 1000";


}  // namespace bilevel::testing
