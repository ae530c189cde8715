// mnist_mlp: trains a multi-layer perceptron on MNIST (or any idx data set of the same layout)
// with one of the library's methods. Progress goes to stderr; stdout gets one JSON object per
// epoch and a final summary object, so runs can be piped into tables and plots.
//
// Exit status: 0 on success, 2 for bad flags, 1 for bad data or a failed run.

#include <CLI/CLI.hpp>
#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <new>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "bilevel/activations/registry.hpp"
#include "bilevel/core/denormals.hpp"
#include "bilevel/methods/registry.hpp"
#include "bilevel/version.hpp"
#include "options.hpp"
#include "outputs.hpp"
#include "processes.hpp"

namespace {

using mnist_mlp::options;

/// Each method's own paper setting, used for every flag the command line leaves unset
/// (docs/methods.md §5; README "Methods").
struct method_defaults {
  std::string layers = "784,256,128,64,10";
  std::string activation = "relu";
  bilevel::Index batch = 50;
  std::string optimizer = "adam";
  double lr = 1e-3;
  std::string beta = "0.01";
  std::string schedule = "constant";
  double mu = 1;
  std::string lambda = "1";
  std::string step_mode = "gradient";
};

/// A flag check that names what it expected and what it got (CLI11 prefixes the flag);
/// `accept(text)` tells whether the text is acceptable, `name` is what --help shows.
template <class Accept>
CLI::Validator expecting(const std::string& name, const std::string& description,
                         Accept accept) {
  return CLI::Validator(
      [description, accept](std::string& text) -> std::string {
        return accept(text) ? std::string() : "expected " + description + ", got '" + text + "'";
      },
      name);
}

/// Whether all of `text` parses as a T (from_chars: no sign for unsigned types, no overflow).
template <class T>
bool parses(const std::string& text, T& value) {
  const auto [end, status] = std::from_chars(text.data(), text.data() + text.size(), value);
  return !text.empty() && status == std::errc() && end == text.data() + text.size();
}

CLI::Validator whole_at_least(long long low) {
  return expecting(low > 0 ? "POSITIVE" : "NONNEGATIVE", "a whole number >= " + std::to_string(low),
                   [low](const std::string& text) {
    long long value = 0;
    return parses(text, value) && value >= low;
  });
}

CLI::Validator any_seed() {
  return expecting("0..2^64-1", "a whole number from 0 to 18446744073709551615",
                   [](const std::string& text) {
    std::uint64_t value = 0;
    return parses(text, value);
  });
}

/// A finite number > low (>= low when `closed_low`) and < high.
CLI::Validator finite_in(double low, bool closed_low,
                         double high = std::numeric_limits<double>::infinity()) {
  std::ostringstream name, description;
  name << (closed_low ? "[" : "(") << low << ",";
  if (std::isfinite(high))
    name << high << ")";
  else
    name.str(low == 0 ? (closed_low ? "NONNEGATIVE" : "POSITIVE") : name.str() + "inf)");
  description << "a finite number " << (closed_low ? ">= " : "> ") << low;
  if (std::isfinite(high)) description << " and < " << high;
  return expecting(name.str(), description.str(), [=](const std::string& text) {
    double value = 0;
    return parses(text, value) && std::isfinite(value) &&
           (closed_low ? value >= low : value > low) && value < high;
  });
}

/// A flag whose value must not be empty (a path, a list or an architecture): an empty value
/// would otherwise read as the flag not given.
CLI::Validator non_empty() {
  return expecting("", "a non-empty value", [](const std::string& text) { return !text.empty(); });
}

/// One of the names a library array spells (bilevel::activation_names, start_names, ...).
template <std::size_t N>
CLI::IsMember one_of(const std::array<std::string_view, N>& names) {
  return CLI::IsMember(std::vector<std::string>(names.begin(), names.end()));
}

/// `requested` threads, at most as many as the machine's cores (more only slow Eigen's
/// products down); says so on stderr unless `quiet`.
int usable_threads(int requested, bool quiet) {
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  if (requested <= cores) return requested;
  if (!quiet)
    std::cerr << "mnist_mlp: --threads " << requested << " lowered to the " << cores
              << " cores available\n";
  return cores;
}

method_defaults defaults_for(const std::string& method) {
  method_defaults d;
  if (method == "chl") d.beta = "0.1";
  if (method == "ep") {  // Scellier & Bengio: 784-500-10, hard sigmoid, batch 20, SGD
    d.layers = "784,500,10";
    d.activation = "hard_sigmoid";
    d.batch = 20;
    d.optimizer = "sgd";
    d.lr = 0.05;
    d.beta = "0.5";
  }
  if (method == "pcn") {  // our choice (docs/methods.md §5.4): 784-500-500-10 logistic, batch 20, Adam
    d.layers = "784,500,500,10";
    d.activation = "sigmoid";
    d.batch = 20;
    d.beta = "1";  // the classic PCN: the loss unweighted in the energy
  }
  if (method == "mac") d.mu = 10;
  if (method == "lpom" || method == "fln") d.lambda = "10";
  if (method == "altmin") {  // Choromanska et al.: 2 x 100 hidden, batch 200, Adam 0.008
    d.layers = "784,100,100,10";
    d.batch = 200;
    d.lr = 0.008;
    d.schedule = "step";
    d.mu = 3e-5;  // the official 0.003 over the last hidden width 100 (altmin.hpp)
    d.step_mode = "native";
  }
  return d;
}

/// Says on stderr which of the given flags have no effect with the chosen method, optimizer,
/// activation or schedule (a typo'd method or a flag meant for another method should not pass
/// silently).
void warn_ignored_flags(const CLI::App& app, const options& opts) {
  // Method flags: the registry says which methods read each (bilevel/methods/registry.hpp).
  const std::vector<std::pair<const char*, const char*>> method_flags = {
      {"--beta", "beta"},
      {"--gamma", "gamma"},
      {"--lambda", "lambda"},
      {"--mu", "mu"},
      {"--mu-growth", "mu_growth"},
      {"--inner-iterations", "inner_iterations"},
      {"--inner-step", "inner_step"},
      {"--tolerance", "tolerance"},
      {"--inner-start", "start"},
      {"--extrapolation", "extrapolation"},
      {"--nudged-iterations", "nudged_iterations"},
      {"--one-sided", "one_sided"},
      {"--inference", "inference"},
      {"--ep-particles", "particles"},
      {"--ep-converged", "converged"},
      {"--layer-scales", "layer_scales"}};
  struct scope {
    std::string flag;
    std::string setting;  // what decides whether the flag applies
    std::vector<std::string> applies_to;
  };
  std::vector<scope> scopes = {{"--momentum", opts.optimizer, {"momentum", "nesterov"}},
                               {"--leaky-slope", opts.activation, {"leaky_relu"}},
                               {"--schedule-every", opts.schedule, {"step"}},
                               {"--schedule-factor", opts.schedule, {"step"}}};
  for (const auto& [flag, option] : method_flags) {
    scope s{flag, opts.method, {}};
    for (const std::string& method : bilevel::method_names())
      if (bilevel::method_reads(method, option)) s.applies_to.push_back(method);
    scopes.push_back(std::move(s));
  }
  for (const scope& s : scopes) {
    if (app.count(s.flag) == 0 ||
        std::find(s.applies_to.begin(), s.applies_to.end(), s.setting) != s.applies_to.end())
      continue;
    std::string list;
    for (const std::string& name : s.applies_to) list += (list.empty() ? "" : ", ") + name;
    std::cerr << "mnist_mlp: warning: " << s.flag << " has no effect with " << s.setting
              << " (it applies to " << list << ")\n";
  }
}

void apply_defaults(const CLI::App& app, options& opts) {
  const method_defaults d = defaults_for(opts.method);
  auto unset = [&](const char* flag) { return app.count(flag) == 0; };
  if (unset("--layers")) opts.layers = d.layers;
  if (unset("--architecture") && opts.model == "lenet5")
    opts.architecture = mnist_mlp::lenet5_architecture;
  if (unset("--activation")) opts.activation = d.activation;
  if (unset("--batch")) opts.batch = d.batch;
  if (unset("--optimizer")) opts.optimizer = d.optimizer;
  if (unset("--lr")) opts.lr = d.lr;
  if (unset("--beta")) opts.beta = d.beta;
  if (unset("--schedule")) {
    opts.schedule = d.schedule;
    if (d.schedule == "step" && unset("--schedule-every")) opts.schedule_every = 8;
  }
  if (unset("--mu")) opts.mu = d.mu;
  if (unset("--lambda")) opts.lambda = d.lambda;
  if (unset("--step-mode")) opts.step_mode = d.step_mode;
}

}  // namespace

int main(int argc, char** argv) {
  const mnist_mlp::processes group(argc, argv);
  options opts;
  CLI::App app{"Train an MLP on MNIST-format idx data with one of bilevel's inference learning "
               "methods. Flags marked (method default) take the method's paper setting when "
               "unset.",
               "mnist_mlp"};
  // A flag given twice takes its last value, so wrappers (scripts/train.sh) can set defaults
  // that the user's own flags override.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.set_version_flag("--version", "mnist_mlp, bilevel " + std::string(bilevel::version));
  app.add_option("--data", opts.data,
                 "Directory with train-/t10k- images and labels (idx, plain or .gz)")
      ->capture_default_str()
      ->check(non_empty());
  app.add_option("--method", opts.method,
                 "bp, fenbp (Fenchel BP), chl, ep, pcn, zil (Z-IL), mac, lpom, fln, altmin")
      ->check(CLI::IsMember(bilevel::method_names()))
      ->capture_default_str();
  app.add_option("--beta", opts.beta,
                 "Spacing per sample: fenbp (one value, or one per layer), chl, ep, pcn (the "
                 "loss's weight s in F = sum E_k + s l) (method default: fenbp 0.01, chl 0.1, "
                 "ep 0.5, pcn 1)")
      ->check(non_empty());
  app.add_option("--init", opts.init,
                 "Weight initialisation: glorot, he, negative (the Fenchel BP paper's start: "
                 "layer 1 -|glorot|, the rest glorot, biases 0), all-negative (every layer "
                 "-|glorot|)")
      ->check(one_of(bilevel::init_scheme_names))
      ->capture_default_str();
  app.add_option("--epochs", opts.epochs, "Number of epochs")
      ->check(whole_at_least(0))
      ->capture_default_str();
  app.add_option("--batch", opts.batch, "Minibatch size (method default: 50; ep, pcn 20; altmin 200)")
      ->check(whole_at_least(1));
  app.add_option("--lr", opts.lr,
                 "Learning rate (method default: 1e-3; ep 0.05; altmin 0.008, halved every 8 "
                 "epochs)")
      ->check(finite_in(0, false));
  app.add_option("--optimizer", opts.optimizer,
                 "adam, sgd, momentum or nesterov (method default: adam; ep sgd)")
      ->check(CLI::IsMember({"adam", "sgd", "momentum", "nesterov"}));
  app.add_option("--momentum", opts.momentum, "Momentum for --optimizer momentum/nesterov")
      ->check(finite_in(0, true, 1))
      ->capture_default_str();
  app.add_option("--weight-decay", opts.weight_decay, "L2 weight decay on the weights (not biases)")
      ->check(finite_in(0, true))
      ->capture_default_str();
  app.add_option("--schedule", opts.schedule,
                 "Learning-rate schedule: constant, step (x --schedule-factor every "
                 "--schedule-every epochs) or cosine (to 0 over --epochs) (method default: "
                 "constant; altmin step)")
      ->check(CLI::IsMember({"constant", "step", "cosine"}));
  app.add_option("--schedule-every", opts.schedule_every, "Epochs between step decays")
      ->check(whole_at_least(1))
      ->capture_default_str();
  app.add_option("--schedule-factor", opts.schedule_factor, "Factor of each step decay")
      ->check(finite_in(0, false))
      ->capture_default_str();
  auto* layers_flag = app.add_option(
      "--layers", opts.layers,
      "Layer sizes of an MLP, input first (method default: 784,256,128,64,10; ep 784,500,10; "
      "pcn 784,500,500,10; altmin 784,100,100,10)");
  auto* model_flag =
      app.add_option("--model", opts.model,
                     "mlp (dense layers of --layers) or lenet5 (--architecture "
                     "conv6k5p2-pool2-conv16k5-pool2-dense120-dense84-dense10)")
          ->check(CLI::IsMember({"mlp", "lenet5"}))
          ->capture_default_str();
  app.add_option("--architecture", opts.architecture,
                 "Layers on the data's one-channel images, '-'-separated: dense<N>, conv<F>k<K>[s<S>][p<P>] "
                 "(F filters K x K, stride S, zero padding P), pool<K>[s<S>] (average pooling); "
                 "the activation follows every conv and dense layer but the last")
      ->excludes(layers_flag)
      ->excludes(model_flag)
      ->check(non_empty());
  app.add_option("--activation", opts.activation,
                 "Hidden activation pair (method default: relu; ep hard_sigmoid; pcn sigmoid)")
      ->check(one_of(bilevel::activation_names));
  app.add_option("--leaky-slope", opts.leaky_slope, "Slope of leaky_relu for a < 0, in (0, 1)")
      
      ->check(finite_in(0, false, 1))->capture_default_str();
  app.add_option("--seed", opts.seed, "Seed of initialisation and shuffling")
      ->check(any_seed())->capture_default_str();
  app.add_option("--threads", opts.threads, "Threads for Eigen's matrix products (per process under mpirun)")
      ->check(whole_at_least(1))
      ->capture_default_str();
  app.add_flag("--keep-denormals", opts.keep_denormals,
               "Keep subnormal floats (IEEE gradual underflow). By default they are flushed to "
               "zero, in every thread: Adam's moments of dead units decay into them, and on x86 "
               "each operation on one costs some 100 cycles (bilevel/core/denormals.hpp)");
  app.add_option("--train-samples", opts.train_samples,
                 "Training images, taken from the start of the training file")
      ->check(whole_at_least(1))
      ->capture_default_str();
  app.add_option("--validation", opts.validation,
                 "Validation images, taken from the end of the training file")
      ->check(whole_at_least(0))
      ->capture_default_str();
  app.add_option("--precision", opts.precision, "Scalar type: float or double")
      ->check(CLI::IsMember({"float", "double"}))
      ->capture_default_str();
  app.add_option("--gamma", opts.gamma, "chl: feedback discount gamma")
      ->check(finite_in(0, false))
      ->capture_default_str();
  app.add_option("--lambda", opts.lambda,
                 "lpom, fln: multipliers lambda, one value or one per layer (method default 10)")
      ->check(non_empty());
  app.add_option("--mu", opts.mu, "mac: penalty weight mu (default 10); altmin: mu (3e-5)")
      ->check(finite_in(0, false));
  app.add_option("--mu-growth", opts.mu_growth, "mac: factor on mu after every step")
      ->check(finite_in(0, false))
      ->capture_default_str();
  app.add_option("--inner-iterations", opts.inner_iterations,
                 "Inner solver iterations (0: the method's default): chl, lpom, fln: the cap on "
                 "sweeps; pcn, mac: the cap on inference steps, Z-steps; ep free steps, altmin "
                 "code steps")
      ->check(whole_at_least(0))
      ->capture_default_str();
  app.add_option("--inner-step", opts.inner_step,
                 "Inner step size (0: the method's default): ep relaxation step, pcn inference "
                 "rate, altmin code rate (in units of 1 / each code objective's curvature "
                 "bound; 0.05)")
      ->check(finite_in(0, true))
      ->capture_default_str();
  app.add_option("--tolerance", opts.tolerance,
                 "Inner tolerance (0: the method's default): chl, lpom, fln, pcn, mac, ep with "
                 "--ep-converged: the stopping rule's tolerance relative to the displacement "
                 "(docs/methods.md §5.6b)")
      ->check(finite_in(0, true))
      ->capture_default_str();
  app.add_option("--inner-start", opts.inner_start,
                 "chl, lpom, fln, pcn, mac: where the inner solve starts, forward (the forward "
                 "pass) or first-order (docs/methods.md §5.6b) (method default: chl, pcn, mac "
                 "forward; lpom, fln first-order)")
      ->check(one_of(bilevel::start_names));
  app.add_option("--extrapolation", opts.extrapolation,
                 "chl, lpom, fln: the cap on the extrapolation factor between the inner "
                 "solver's sweeps, in [0, 1); 0 gives plain block coordinate descent "
                 "(docs/methods.md §5.6b) (method default: 0.95)")
      ->check(finite_in(0, true, 1));
  app.add_option("--nudged-iterations", opts.nudged_iterations, "ep: steps of each nudged phase")
      ->check(whole_at_least(1))
      ->capture_default_str();
  app.add_option("--inference", opts.inference,
                 "pcn: anderson (the default: Anderson mixing over the last 5 steps, falling "
                 "back to the plain step where F rose, certified by plain steps; a third of the "
                 "steps or fewer), plain (fixed-rate gradient descent, the classic dynamics) or "
                 "momentum (Nesterov momentum with restarts, certified by plain steps; about half "
                 "the steps on smooth nets, but it can leave the forward pass's basin); "
                 "docs/methods.md §5.4")
      ->check(one_of(bilevel::inference_names));
  app.add_flag("--one-sided", opts.one_sided,
               "ep: one-sided estimate with a random sign of beta instead of the symmetric one");
  app.add_flag("--ep-particles", opts.ep_particles,
               "ep: persistent particles, one state per training image: each free phase starts "
               "where that image's last one ended (one process only)");
  app.add_flag("--ep-converged", opts.ep_converged,
               "ep: every phase relaxed to the displacement rule of docs/methods.md §5.6b "
               "instead of fixed step counts; --tolerance sets its tolerance and "
               "--inner-iterations its cap");
  app.add_option("--layer-scales", opts.layer_scales,
                 "ep: factors on each layer's gradient, one per layer (with --optimizer sgd: "
                 "per-layer learning rates --lr x factor)")
      ->check(non_empty());
  app.add_option("--step-mode", opts.step_mode,
                 "gradient (the method's gradient estimate and --optimizer) or native (the "
                 "method's own block-coordinate step: mac, lpom, fln, altmin) (method default: "
                 "gradient; altmin native)")
      ->check(CLI::IsMember({"gradient", "native"}));
  app.add_option("--save", opts.save,
                 "Checkpoint file, written atomically at the start, every --save-every epochs "
                 "and after the last epoch")
      ->check(non_empty());
  app.add_option("--save-every", opts.save_every, "Epochs between checkpoints")
      ->check(whole_at_least(1))
      ->capture_default_str();
  app.add_option("--resume", opts.resume,
                 "Checkpoint to continue from: training runs on from its epoch to --epochs, "
                 "exactly as if it had never stopped. The checkpoint records the training flags "
                 "and the data's checksums and refuses others (--epochs, outputs, --data's "
                 "location and --threads may change)")
      ->check(non_empty());
  app.add_option("--csv", opts.csv,
                 "Also write the per-epoch metrics to this CSV file (rewritten atomically after "
                 "every epoch; a resumed run keeps the earlier epochs' rows)")
      ->check(non_empty());
  app.add_option("--export", opts.export_dir,
                 "After the last epoch, write the trained parameters as NumPy files into this "
                 "existing directory: Wk.npy and bk.npy for each layer k with parameters, and "
                 "manifest.json (README \"Reliability\"; import_npy reads them back)")
      ->check(non_empty());
  app.add_flag("--quiet", opts.quiet,
               "No progress on stderr (errors only); stdout's JSON is unchanged");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return group.fail(std::string(e.what()) + " (see --help)", 2);
  }
  if (opts.model != "mlp" && app.count("--layers") > 0)
    return group.fail("--layers sets the sizes of --model mlp, not of --model " + opts.model, 2);
  apply_defaults(app, opts);
  if (!opts.quiet && group.root()) warn_ignored_flags(app, opts);
  if (opts.ep_particles && group.size() > 1)
    return group.fail("--ep-particles needs a single process (the particles are per image)", 2);

  try {
    Eigen::setNbThreads(usable_threads(opts.threads, opts.quiet || !group.root()));
    if (!opts.keep_denormals) bilevel::flush_denormals();  // after the pool's size is known
    group.require_same_flags(mnist_mlp::training_flags(opts));
    if (group.root()) mnist_mlp::check_outputs(opts);  // one process writes the files
#ifdef MNIST_MLP_WITH_DOUBLE
    if (opts.precision == "double") return mnist_mlp::run_double(opts, group);
#else
    if (opts.precision == "double")
      return group.fail("--precision double: this mnist_mlp was built without it "
                        "(CMake option BILEVEL_TRAINER_DOUBLE=OFF)", 2);
#endif
    return mnist_mlp::run_float(opts, group);
  } catch (const bilevel::config_error& e) {
    return group.fail(e.what(), 2);
  } catch (const std::bad_alloc&) {
    return group.fail("out of memory (std::bad_alloc): the network, its training state and the "
                      "data do not fit; use smaller --layers or --architecture, or fewer "
                      "--train-samples", 1);
  } catch (const std::exception& e) {
    return group.fail(e.what(), 1);
  }
}
