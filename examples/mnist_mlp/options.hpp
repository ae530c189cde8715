#pragma once
// The trainer's settings, shared by the command-line front end and the typed training code.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "bilevel/core/error.hpp"
#include "bilevel/core/state_stream.hpp"
#include "bilevel/core/types.hpp"

namespace mnist_mlp {

using bilevel::Index;

/// LeNet-5 for 28 x 28 images (--model lenet5): two convolutions with average pooling, then
/// three dense layers.
inline constexpr const char* lenet5_architecture =
    "conv6k5p2-pool2-conv16k5-pool2-dense120-dense84-dense10";

/// Every flag of the trainer (a new field belongs in training_flags too, unless it may differ
/// between the processes of an MPI job).
struct options {
  std::string data = "data/mnist";
  std::string method = "fenbp";
  std::string beta = "0.01";
  std::string init = "glorot";
  Index epochs = 10;
  Index batch = 50;
  double lr = 1e-3;
  std::string optimizer = "adam";
  double momentum = 0.9;
  double weight_decay = 0;
  std::string schedule = "constant";
  Index schedule_every = 10;
  double schedule_factor = 0.5;
  std::string layers = "784,256,128,64,10";
  std::string model = "mlp";  ///< mlp (--layers) or lenet5
  /// Image layers in the grammar of bilevel/layers/architecture.hpp; empty: --model's.
  std::string architecture;
  std::string activation = "relu";
  double leaky_slope = 0.01;
  std::uint64_t seed = 1;
  int threads = 1;
  bool keep_denormals = false;  ///< --keep-denormals: gradual underflow (default: flushed)
  Index train_samples = 50000;
  Index validation = 10000;
  std::string precision = "float";
  // Method parameters (docs/methods.md §5); each applies to the methods named in its help text.
  double gamma = 1;
  std::string lambda = "1";
  double mu = 1;
  double mu_growth = 1;
  Index inner_iterations = 0;  ///< 0: the method's own default
  double inner_step = 0;       ///< 0: the method's own default
  double tolerance = 0;        ///< 0: the method's own default
  std::string inner_start;     ///< "forward" or "first-order"; empty: the method's own default
  double extrapolation = -1;   ///< < 0: the method's own default
  Index nudged_iterations = 4;
  bool one_sided = false;
  std::string inference;  ///< pcn: "plain", "momentum" or "anderson"; empty: the method's default
  bool ep_particles = false;
  bool ep_converged = false;
  std::string layer_scales;  ///< ep: per-layer factors; empty: none
  std::string step_mode = "gradient";
  // Checkpoints (io/checkpoint.hpp).
  std::string save;
  std::string resume;
  Index save_every = 1;
  // Output.
  std::string csv;
  std::string export_dir;  ///< --export: the trained parameters as NumPy files
  bool quiet = false;
};

/// One training flag as it decides the run: its name and its value as text.
struct flag_value {
  std::string name;
  std::string value;
  bool operator==(const flag_value&) const = default;
};

/// The flags that decide what is trained: every field of `options` but those that may differ
/// between the processes of one MPI job or between a run and its resumption (where files are,
/// threads, denormal flushing, output). MPI processes compare them before they train together;
/// checkpoints store them, and --resume refuses a run whose flags differ (resumption_flags).
inline std::vector<flag_value> training_flags(const options& o) {
  const auto text = [](const auto& value) {
    std::ostringstream out;
    out.precision(17);
    out << value;
    return out.str();
  };
  return {{"--method", o.method},
          {"--beta", o.beta},
          {"--init", o.init},
          {"--epochs", text(o.epochs)},
          {"--batch", text(o.batch)},
          {"--lr", text(o.lr)},
          {"--optimizer", o.optimizer},
          {"--momentum", text(o.momentum)},
          {"--weight-decay", text(o.weight_decay)},
          {"--schedule", o.schedule},
          {"--schedule-every", text(o.schedule_every)},
          {"--schedule-factor", text(o.schedule_factor)},
          {"--layers", o.layers},
          {"--model", o.model},
          {"--architecture", o.architecture},
          {"--activation", o.activation},
          {"--leaky-slope", text(o.leaky_slope)},
          {"--seed", text(o.seed)},
          {"--train-samples", text(o.train_samples)},
          {"--validation", text(o.validation)},
          {"--precision", o.precision},
          {"--gamma", text(o.gamma)},
          {"--lambda", o.lambda},
          {"--mu", text(o.mu)},
          {"--mu-growth", text(o.mu_growth)},
          {"--inner-iterations", text(o.inner_iterations)},
          {"--inner-step", text(o.inner_step)},
          {"--tolerance", text(o.tolerance)},
          {"--inner-start", o.inner_start},
          {"--extrapolation", text(o.extrapolation)},
          {"--nudged-iterations", text(o.nudged_iterations)},
          {"--one-sided", text(o.one_sided)},
          {"--inference", o.inference},
          {"--ep-particles", text(o.ep_particles)},
          {"--ep-converged", text(o.ep_converged)},
          {"--layer-scales", o.layer_scales},
          {"--step-mode", o.step_mode},
          {"--save-every", text(o.save_every)},
          {"--resume (given or not)", text(!o.resume.empty())}};
}

/// The layers of the run, as the reports name them: the architecture or the --layers sizes.
inline const std::string& structure(const options& o) {
  return o.architecture.empty() ? o.layers : o.architecture;
}

/// The training flags a resumed run must share with the run that saved the checkpoint: all but
/// --epochs (a run may be continued further; with the cosine schedule, whose rates depend on
/// it, it must stay), --save-every and whether --resume is given.
inline std::vector<flag_value> resumption_flags(const options& o) {
  std::vector<flag_value> flags = training_flags(o);
  std::erase_if(flags, [&](const flag_value& flag) {
    return (flag.name == "--epochs" && o.schedule != "cosine") || flag.name == "--save-every" ||
           flag.name.starts_with("--resume");
  });
  return flags;
}

/// The resumption flags of a run as a checkpoint component. Loading compares the saved flags
/// with this run's and refuses a difference, naming each flag: a resumed run is only the same
/// run, bit for bit, with the same flags.
struct flags_record {
  std::vector<flag_value> flags;

  void save_state(bilevel::state_writer& out) const {
    out.write_text("mnist_mlp flags");
    out.write_u64(flags.size());
    for (const flag_value& flag : flags) {
      out.write_text(flag.name);
      out.write_text(flag.value);
    }
  }
  void load_state(bilevel::state_reader& in) {
    in.expect_text("mnist_mlp flags", "component");
    const std::uint64_t count = in.read_u64("number of flags");
    std::vector<flag_value> saved;
    for (std::uint64_t i = 0; i < count; ++i) {  // each read is bounded by the bytes left
      flag_value flag;
      flag.name = in.read_text("flag name");
      flag.value = in.read_text("flag value");
      saved.push_back(std::move(flag));
    }
    std::string differences;
    for (const flag_value& mine : flags) {
      const auto theirs = std::find_if(saved.begin(), saved.end(), [&](const flag_value& flag) {
        return flag.name == mine.name;
      });
      if (theirs == saved.end() || theirs->value != mine.value)
        differences += bilevel::detail::concat(
            differences.empty() ? "" : ", ", mine.name, " ", mine.value.empty() ? "''" : mine.value,
            " (the checkpoint's run: ",
            theirs == saved.end() ? "not recorded" : theirs->value.empty() ? "''" : theirs->value,
            ")");
    }
    if (!differences.empty())
      in.fail("the training flags",
              "those of the run that saved it (only --epochs, outputs, --data's location, "
              "--threads and --keep-denormals may change on --resume)",
              differences);
  }
};

/// Parses a comma-separated list of numbers, each finite and > 0 (sizes, spacings, weights and
/// scales all are); `what` names the flag in errors. An empty item anywhere (a trailing comma
/// too) is refused, not skipped.
template <class T>
std::vector<T> parse_list(const std::string& text, const std::string& what) {
  const auto refuse = [&] {
    return bilevel::config_error(what + " must be a comma-separated list of finite numbers > 0, "
                                 "got '" + text + "'");
  };
  if (text.empty()) throw bilevel::config_error(what + " must not be empty");
  if (text.back() == ',') throw refuse();
  std::vector<T> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    std::istringstream parse(item);
    T value{};
    if (!(parse >> value) || !(parse >> std::ws).eof() || !std::isfinite(double(value)) ||
        !(value > T(0)))
      throw refuse();
    values.push_back(value);
  }
  return values;
}

class processes;  // processes.hpp

int run_float(const options& opts, const processes& group);
int run_double(const options& opts, const processes& group);

}  // namespace mnist_mlp
