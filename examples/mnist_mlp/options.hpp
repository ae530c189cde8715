#pragma once
// The trainer's settings, shared by the command-line front end and the typed training code.

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "bilevel/core/error.hpp"
#include "bilevel/core/types.hpp"

namespace mnist_mlp {

using bilevel::Index;

/// Every flag of the trainer (a new field belongs in training_settings too, unless it may differ
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
  std::string activation = "relu";
  double leaky_slope = 0.01;
  std::uint64_t seed = 1;
  int threads = 1;
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
  Index nudged_iterations = 4;
  bool one_sided = false;
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
  bool quiet = false;
};

/// The settings that decide what is trained, as text: every field of `options` but those that
/// may differ between the processes of one MPI job (where files are, threads, output). The
/// processes compare it before they train together.
inline std::string training_settings(const options& o) {
  std::ostringstream text;
  text.precision(17);
  text << o.method << ' ' << o.beta << ' ' << o.init << ' ' << o.epochs << ' ' << o.batch << ' '
       << o.lr << ' ' << o.optimizer << ' ' << o.momentum << ' ' << o.weight_decay << ' '
       << o.schedule << ' ' << o.schedule_every << ' ' << o.schedule_factor << ' ' << o.layers
       << ' ' << o.activation << ' ' << o.leaky_slope << ' ' << o.seed << ' ' << o.train_samples
       << ' ' << o.validation << ' ' << o.precision << ' ' << o.gamma << ' ' << o.lambda << ' '
       << o.mu << ' ' << o.mu_growth << ' ' << o.inner_iterations << ' ' << o.inner_step << ' '
       << o.tolerance << ' ' << o.inner_start << ' ' << o.nudged_iterations << ' ' << o.one_sided
       << ' ' << o.ep_particles << ' ' << o.ep_converged << ' ' << o.layer_scales << ' '
       << o.step_mode
       << ' ' << o.save_every << ' ' << o.resume.empty();
  return text.str();
}

/// Parses a comma-separated list of numbers; `what` names the flag in errors.
template <class T>
std::vector<T> parse_list(const std::string& text, const std::string& what) {
  std::vector<T> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    std::istringstream parse(item);
    T value{};
    if (!(parse >> value) || !(parse >> std::ws).eof())
      throw bilevel::config_error(what + " must be a comma-separated list of numbers, got '" +
                                  text + "'");
    values.push_back(value);
  }
  if (values.empty()) throw bilevel::config_error(what + " must not be empty");
  return values;
}

class processes;  // processes.hpp

int run_float(const options& opts, const processes& group);
int run_double(const options& opts, const processes& group);

}  // namespace mnist_mlp
