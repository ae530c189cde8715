// Checkpoints (io/checkpoint.hpp): a resumed run is bit-identical to an uninterrupted one, for
// BP, Fenchel BP and the iterative methods with state of their own; damaged or mismatching files
// are refused with a data_error and leave every object untouched; files are replaced atomically.

#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <filesystem>
#include <string>
#include <vector>

#include "bilevel/bilevel.hpp"
#include "helpers.hpp"

namespace fs = std::filesystem;
using namespace bilevel;
using namespace bilevel::testing;
using Catch::Matchers::Contains;

namespace {

dataset<double> blob_set(std::uint64_t seed, Index count) {
  random_source random(seed);
  dataset<double> set;
  blobs(random, count, 0.8, set.x, set.y);
  return set;
}

/// Trains `epochs` epochs, or `epochs_before` epochs, a checkpoint, fresh objects restored from
/// it, and the rest: the same kind of run either way. Returns the final parameters.
template <class Program, class Method, class Optimizer>
Vector<double> run(const Program& initial, const Method& method_prototype,
                   const Optimizer& optimizer_prototype, step_mode mode, Index epochs,
                   Index epochs_before, const fs::path& file) {
  const dataset<double> train = blob_set(3, 90);
  Program net = initial;
  Method method = method_prototype;
  Optimizer optimizer = optimizer_prototype;
  auto loop = std::make_unique<trainer<Program, Method, Optimizer>>(net, method, optimizer, 16,
                                                                    77, mode);
  for (Index epoch = 0; epoch < epochs; ++epoch) {
    if (epoch == epochs_before) {
      save_checkpoint(file, net, optimizer, method, loop->progress());
      // Everything starts over from the prototypes (other parameters, fresh solver state, a
      // different shuffling seed), and the checkpoint must bring back the run's state.
      net = initial;
      random_source other(999);
      randomize(net, other);
      method = method_prototype;
      optimizer = optimizer_prototype;
      loop = std::make_unique<trainer<Program, Method, Optimizer>>(net, method, optimizer, 16,
                                                                   12345, mode);
      load_checkpoint(file, net, optimizer, method, loop->progress());
      REQUIRE(loop->epoch() == epochs_before);
    }
    loop->run_epoch(train);
  }
  return net.parameters();
}

template <class Program, class Method, class Optimizer>
void check_exact_resume(const Program& initial, const Method& method, const Optimizer& optimizer,
                        step_mode mode, const std::string& name) {
  scratch_directory directory("bilevel-checkpoint-resume-" + name + "-");
  const fs::path file = directory.path / "run.ckpt";
  const Vector<double> straight = run(initial, method, optimizer, mode, 4, -1, file);
  const Vector<double> resumed = run(initial, method, optimizer, mode, 4, 2, file);
  CHECK(straight.allFinite());
  CHECK(straight == resumed);  // bit for bit
  // The check has teeth: without the checkpoint the second half differs.
  const Vector<double> two_epochs = run(initial, method, optimizer, mode, 2, -1, file);
  CHECK(two_epochs != straight);
}

template <class Hidden>
mlp<double, Hidden> small_net(std::uint64_t seed, const std::vector<Index>& sizes = {4, 6, 5, 3}) {
  auto net = make_mlp<double, Hidden>(sizes);
  random_source random(seed);
  net.initialize(init_scheme::glorot_uniform, random);
  return net;
}

adam<double> adam_for(Index parameters, Index weights) {
  return adam<double>({.learning_rate = 0.01}, parameters, weights);
}

/// A user-defined pair with a parameter of its own: f(a) = max(a, 0) * scale.
struct scaled_relu {
  double scale = 1;
  std::string name() const { return "scaled_relu"; }
  template <class S> S f(S a) const { return a > 0 ? S(scale) * a : S(0); }
  template <class S> S df(S a) const { return a > 0 ? S(scale) : S(0); }
  template <class S> S G(S a) const { return a > 0 ? S(scale) * a * a / 2 : S(0); }
  template <class S> S G_conj(S z) const {
    return z >= 0 ? z * z / (2 * S(scale)) : std::numeric_limits<S>::infinity();
  }
  std::vector<double> hyperparameters() const { return {scale}; }
  void set_hyperparameters(const std::vector<double>& values) {
    detail::require(values.size() == 1 && values[0] > 0, "scaled_relu::set_hyperparameters",
                    "the values", "one scale > 0", values.size());
    scale = values[0];
  }
};

}  // namespace

TEST_CASE("resuming from a checkpoint is bit-identical to an uninterrupted run: BP, Fenchel BP",
          "[checkpoint]") {
  const auto net = small_net<relu>(1);
  const auto optimizer = adam_for(net.parameter_count(), net.weight_count());
  check_exact_resume(net, bp<double>(), optimizer, step_mode::gradient, "bp");
  check_exact_resume(net, fenchel_bp<double>(0.5), optimizer, step_mode::gradient, "fenbp");
  const sgd<double> momentum({.learning_rate = 0.05, .momentum = 0.9, .nesterov = true},
                             net.parameter_count(), net.weight_count());
  check_exact_resume(net, bp<double>(), momentum, step_mode::gradient, "bp-nesterov");
}

TEST_CASE("resuming is bit-identical for iterative methods with state: EP's random sign, MAC's "
          "mu schedule, LPOM's and CHL's step sizes, AltMin's optimizers",
          "[checkpoint]") {
  const auto net = small_net<relu>(2);
  const auto optimizer = adam_for(net.parameter_count(), net.weight_count());
  SECTION("EP, one-sided with a random sign") {
    const auto ep_net = small_net<hard_sigmoid>(3, {4, 6, 3});
    ep<double>::settings config;
    config.symmetric = false;
    config.random_sign = true;
    config.free_iterations = 10;
    check_exact_resume(ep_net, ep<double>(config),
                       adam_for(ep_net.parameter_count(), ep_net.weight_count()),
                       step_mode::gradient, "ep");
  }
  SECTION("EP with persistent particles, one per training example") {
    const auto ep_net = small_net<hard_sigmoid>(3, {4, 6, 3});
    ep<double>::settings config = ep<double>::paper_settings(1, 90);  // run()'s 90 examples
    config.free_iterations = 3;  // the particles carry what 3 steps leave unrelaxed
    config.layer_scales = {0.5, 0.3};
    check_exact_resume(ep_net, ep<double>(config),
                       sgd<double>({.learning_rate = 0.5}, ep_net.parameter_count(),
                                   ep_net.weight_count()),
                       step_mode::gradient, "ep-particles");
  }
  SECTION("MAC, native steps with a growing mu") {
    mac<double>::settings config;
    config.mu = 1;
    config.mu_growth = 1.5;
    check_exact_resume(net, mac<double>(config), optimizer, step_mode::native, "mac");
  }
  SECTION("LPOM native steps and CHL gradients") {
    check_exact_resume(net, lpom<double>(), optimizer, step_mode::native, "lpom");
    check_exact_resume(net, chl<double>(), optimizer, step_mode::gradient, "chl");
  }
  SECTION("AltMin, native steps with Adam per layer") {
    check_exact_resume(net, altmin<double>(), optimizer, step_mode::native, "altmin");
  }
}

TEST_CASE("a checkpoint restores parameters, pair hyperparameters, optimizer and progress",
          "[checkpoint]") {
  scratch_directory directory("bilevel-checkpoint-round-trip-");
  const fs::path file = directory.path / "state.ckpt";
  using net_type = program<double, softmax_cross_entropy, leaky_relu, scaled_relu, identity>;
  net_type saved({3, 4, 4, 2}, {leaky_relu(0.2), scaled_relu{2.5}, identity{}});
  random_source random(5);
  randomize(saved, random);
  adam<double> saved_adam({.learning_rate = 0.02}, saved.parameter_count(), saved.weight_count());
  saved_adam.step(saved.parameters(), Vector<double>::Ones(saved.parameter_count()));
  training_progress saved_progress(8);
  saved_progress.epoch = 3;
  static_cast<void>(saved_progress.random.normal());  // leaves a spare normal draw behind
  save_checkpoint(file, saved, saved_adam, saved_progress);

  net_type loaded({3, 4, 4, 2}, {leaky_relu(0.01), scaled_relu{1}, identity{}});
  adam<double> loaded_adam({}, loaded.parameter_count(), loaded.weight_count());
  training_progress loaded_progress(1);
  load_checkpoint(file, loaded, loaded_adam, loaded_progress);

  CHECK(loaded.parameters() == saved.parameters());
  CHECK(std::get<leaky_relu>(loaded.layer(0).pair()).slope == 0.2);
  CHECK(std::get<scaled_relu>(loaded.layer(1).pair()).scale == 2.5);
  CHECK(loaded_adam.steps() == 1);
  CHECK(loaded_adam.learning_rate() == 0.02);
  CHECK(loaded_adam.first_moment() == saved_adam.first_moment());
  CHECK(loaded_adam.second_moment() == saved_adam.second_moment());
  CHECK(loaded_progress.epoch == 3);
  CHECK(loaded_progress.random.normal() == saved_progress.random.normal());
  CHECK(loaded_progress.random.uniform() == saved_progress.random.uniform());
}

TEST_CASE("a damaged checkpoint is refused and nothing changes", "[checkpoint]") {
  scratch_directory directory("bilevel-checkpoint-damaged-");
  const fs::path file = directory.path / "state.ckpt";
  auto net = small_net<relu>(6);
  adam<double> optimizer = adam_for(net.parameter_count(), net.weight_count());
  const std::vector<std::uint8_t> bytes = checkpoint_bytes(net, optimizer);

  auto target = small_net<relu>(7);
  adam<double> target_optimizer({.learning_rate = 0.5}, net.parameter_count(), net.weight_count());
  const Vector<double> before = target.parameters();
  const auto refused = [&](std::span<const std::uint8_t> damaged) {
    try {
      restore_checkpoint(damaged, "test", target, target_optimizer);
    } catch (const data_error&) {
      return target.parameters() == before && target_optimizer.learning_rate() == 0.5;
    }
    return false;
  };

  SECTION("every truncation") {
    for (std::size_t length = 0; length < bytes.size(); ++length) {
      CAPTURE(length);
      CHECK(refused(std::span(bytes).first(length)));
    }
  }
  SECTION("every single flipped bit of a sample of bytes, and every byte once") {
    std::vector<std::uint8_t> damaged = bytes;
    for (std::size_t position = 0; position < bytes.size(); ++position) {
      for (int bit = 0; bit < 8; bit += position % 64 == 0 ? 1 : 8) {
        CAPTURE(position, bit);
        damaged[position] ^= std::uint8_t(1u << bit);
        CHECK(refused(damaged));
        damaged[position] = bytes[position];
      }
    }
  }
  SECTION("extra bytes at the end") {
    std::vector<std::uint8_t> extended = bytes;
    extended.push_back(0);
    CHECK(refused(extended));
  }
  SECTION("a missing file, a directory, an empty file") {
    CHECK_THROWS_WITH(load_checkpoint(directory.path / "none.ckpt", target, target_optimizer),
                      Contains("load_checkpoint") && Contains("none.ckpt") &&
                          Contains("no such file"));
    CHECK_THROWS_AS(load_checkpoint(directory.path, target, target_optimizer), data_error);
    write_file_atomically(file, {}, "test");
    CHECK_THROWS_WITH(load_checkpoint(file, target, target_optimizer),
                      Contains("not a bilevel checkpoint"));
  }
  SECTION("a checksum mismatch is named") {
    std::vector<std::uint8_t> damaged = bytes;
    damaged[40] ^= 1;
    CHECK_THROWS_WITH(restore_checkpoint(damaged, "test", target, target_optimizer),
                      Contains("checksum"));
  }
  CHECK(target.parameters() == before);
}

TEST_CASE("a checkpoint of something else is refused with a message naming the difference",
          "[checkpoint]") {
  const auto net = small_net<relu>(8);
  const auto optimizer = adam_for(net.parameter_count(), net.weight_count());
  const std::vector<std::uint8_t> bytes = checkpoint_bytes(net, optimizer, bp<double>());

  const auto message = [&](auto target_net, auto target_optimizer, auto target_method) {
    const Vector<double> before = target_net.parameters();
    try {
      restore_checkpoint(bytes, "file.ckpt", target_net, target_optimizer, target_method);
    } catch (const data_error& e) {
      CHECK(target_net.parameters() == before);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const auto other_sizes = small_net<relu>(8, {4, 7, 5, 3});
  CHECK_THAT(message(other_sizes, adam_for(other_sizes.parameter_count(), other_sizes.weight_count()),
                     bp<double>()),
             Contains("file.ckpt") && Contains("size of layer 1 must be 7, got 6"));
  const auto other_pair = small_net<tanh_pair>(8);
  CHECK_THAT(message(other_pair, optimizer, bp<double>()),
             Contains("activation of layer 1 must be 'tanh', got 'relu'"));
  CHECK_THAT(message(net, sgd<double>({}, net.parameter_count(), net.weight_count()), bp<double>()),
             Contains("optimizer must be 'sgd', got 'adam'"));
  CHECK_THAT(message(net, optimizer, fenchel_bp<double>(0.1)),
             Contains("method must be 'fenbp', got 'bp'"));
  auto single = make_mlp<float, relu>({4, 6, 5, 3});
  auto optimizer_copy = optimizer;
  bp<double> method;
  CHECK_THROWS_WITH(restore_checkpoint(bytes, "f", single, optimizer_copy, method),
                    Contains("parameters scalar type must be 'float', got 'double'"));
  auto net_copy = net;
  CHECK_THROWS_WITH(restore_checkpoint(bytes, "f", net_copy),
                    Contains("number of components must be 1, got 3"));
}

TEST_CASE("a checkpoint with non-finite parameters or a newer version is refused",
          "[checkpoint]") {
  auto net = small_net<relu>(9);
  net.parameters()(3) = std::numeric_limits<double>::quiet_NaN();
  const std::vector<std::uint8_t> bytes = checkpoint_bytes(net);
  auto target = small_net<relu>(9);
  CHECK_THROWS_WITH(restore_checkpoint(bytes, "f", target),
                    Contains("parameters must be finite"));
  CHECK(target.parameters().allFinite());

  std::vector<std::uint8_t> newer = checkpoint_bytes(target);
  newer[8] = 2;  // the version's low byte
  CHECK_THROWS_WITH(restore_checkpoint(newer, "f", target),
                    Contains("version must be 1, got 2 (written by a newer bilevel)"));
}

TEST_CASE("counts in a checkpoint are bounded, so that counting on cannot overflow",
          "[checkpoint][reliability]") {
  auto net = small_net<relu>(11);
  training_progress progress(1);
  progress.epoch = max_saved_count;
  const std::vector<std::uint8_t> at_bound = checkpoint_bytes(progress);
  training_progress restored(2);
  restore_checkpoint(at_bound, "f", restored);
  CHECK(restored.epoch == max_saved_count);
  progress.epoch = std::numeric_limits<Index>::max() - 1;
  CHECK_THROWS_WITH(restore_checkpoint(checkpoint_bytes(progress), "f", restored),
                    Contains("epoch must be in [0, 9007199254740992]"));
  sgd<double> optimizer({}, net.parameter_count(), net.weight_count());
  Vector<double> velocity = Vector<double>::Zero(net.parameter_count());
  optimizer.restore(velocity, std::numeric_limits<Index>::max());
  sgd<double> loaded({}, net.parameter_count(), net.weight_count());
  CHECK_THROWS_WITH(restore_checkpoint(checkpoint_bytes(optimizer), "f", loaded),
                    Contains("sgd steps must be in [0, 9007199254740992]"));
}

TEST_CASE("checkpoints are written atomically", "[checkpoint]") {
  scratch_directory directory("bilevel-checkpoint-atomic-");
  const fs::path file = directory.path / "model.ckpt";
  auto net = small_net<relu>(10);
  save_checkpoint(file, net);
  const auto size = fs::file_size(file);

  SECTION("an unwritable place names the file and leaves the old one") {
    fs::permissions(directory.path, fs::perms::owner_read | fs::perms::owner_exec);
    if (::access(directory.path.c_str(), W_OK) == 0) {
      WARN("running as a user who can write anywhere (root): the permission check is skipped");
    } else {
      random_source other(1);
      randomize(net, other);
      CHECK_THROWS_WITH(save_checkpoint(file, net),
                        Contains("save_checkpoint: cannot write") && Contains("model.ckpt"));
      CHECK(fs::file_size(file) == size);
    }
    fs::permissions(directory.path, fs::perms::owner_all);
    CHECK_THROWS_WITH(save_checkpoint(directory.path / "missing" / "x.ckpt", net),
                      Contains("save_checkpoint: cannot write") && Contains("x.ckpt"));
  }
  SECTION("temporaries a killed writer left are removed by the next save, others are kept") {
    const std::vector<std::string> stale = {"model.ckpt.tmp.0123456789abcdef",
                                            "model.ckpt.tmp.fedcba9876543210"};
    const std::vector<std::string> kept = {"model.ckpt.tmp.12", "other.ckpt.tmp.0123456789abcdef",
                                           "model.ckpt.tmp.0123456789abcdeg"};
    for (const auto& names : {stale, kept})
      for (const std::string& name : names) std::fclose(std::fopen((directory.path / name).c_str(), "w"));
    save_checkpoint(file, net);
    for (const std::string& name : stale) CHECK_FALSE(fs::exists(directory.path / name));
    for (const std::string& name : kept) CHECK(fs::exists(directory.path / name));
  }
  SECTION("a name as long as the file system allows can be written: the temporary fits too") {
    const fs::path longest = directory.path / std::string(255, 'c');
    save_checkpoint(longest, net);
    CHECK(fs::file_size(longest) == size);
    save_checkpoint(longest, net);  // and the cut-down temporary prefix is cleaned up as well
    CHECK(std::distance(fs::directory_iterator(directory.path), fs::directory_iterator()) == 2);
  }
  SECTION("a new checkpoint replaces the old one, with no temporary file left") {
    auto bigger = small_net<relu>(10, {4, 30, 3});
    save_checkpoint(file, bigger);
    CHECK(fs::file_size(file) > size);
    CHECK(std::distance(fs::directory_iterator(directory.path), fs::directory_iterator()) == 1);
    load_checkpoint(file, bigger);
  }
}
