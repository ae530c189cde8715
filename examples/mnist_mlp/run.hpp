#pragma once
// The typed part of the trainer: given the scalar type and the hidden activation pair, build the
// program, the method and the optimizer, train, and print one JSON object per epoch.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <limits>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <unistd.h>  // sysconf: the machine's memory

#include "bilevel/bilevel.hpp"
#include "bilevel/train/trainer.hpp"
#include "options.hpp"
#include "processes.hpp"
#include "report.hpp"

namespace mnist_mlp {

using json = nlohmann::json;

/// The method options the flags give; a list flag is parsed only for a method that reads it.
inline bilevel::method_options method_settings(const options& opts) {
  const auto reads = [&](std::string_view option) {
    return bilevel::method_reads(opts.method, option);
  };
  bilevel::method_options o;
  if (reads("beta")) o.beta = parse_list<double>(opts.beta, "--beta");
  if (reads("lambda")) o.lambda = parse_list<double>(opts.lambda, "--lambda");
  if (reads("layer_scales") && !opts.layer_scales.empty())
    o.layer_scales = parse_list<double>(opts.layer_scales, "--layer-scales");
  o.gamma = opts.gamma;
  o.mu = opts.mu;
  o.mu_growth = opts.mu_growth;
  if (opts.inner_iterations > 0) o.inner_iterations = opts.inner_iterations;
  if (opts.inner_step > 0) o.inner_step = opts.inner_step;
  if (opts.tolerance > 0) o.tolerance = opts.tolerance;
  if (opts.extrapolation >= 0) o.extrapolation = opts.extrapolation;
  if (!opts.inner_start.empty())
    o.start = bilevel::parse_start(opts.inner_start, "--inner-start");
  o.nudged_iterations = opts.nudged_iterations;
  o.one_sided = opts.one_sided;
  if (!opts.inference.empty())
    o.inference = bilevel::parse_inference(opts.inference, "--inference");
  o.converged = opts.ep_converged;
  if (opts.ep_particles) o.particles = opts.train_samples;
  o.seed = opts.seed;
  o.learning_rate = opts.lr;
  return o;
}

/// The optimizer chosen on the command line.
template <class S>
bilevel::any_optimizer<S> make_optimizer(const options& opts, Index parameters, Index decayed) {
  if (opts.optimizer == "adam") {
    typename bilevel::adam<S>::settings settings;
    settings.learning_rate = S(opts.lr);
    settings.weight_decay = S(opts.weight_decay);
    return bilevel::adam<S>(settings, parameters, decayed);
  }
  typename bilevel::sgd<S>::settings settings;
  settings.learning_rate = S(opts.lr);
  settings.momentum = opts.optimizer == "sgd" ? S(0) : S(opts.momentum);
  settings.nesterov = opts.optimizer == "nesterov";
  settings.weight_decay = S(opts.weight_decay);
  return bilevel::sgd<S>(settings, parameters, decayed);
}

inline bilevel::lr_schedule<double> make_schedule(const options& opts) {
  using schedule = bilevel::lr_schedule<double>;
  if (opts.schedule == "step")
    return schedule::step_decay(opts.lr, opts.schedule_every, opts.schedule_factor);
  if (opts.schedule == "cosine") return schedule::cosine(opts.lr, opts.epochs);
  return schedule::constant(opts.lr);
}

/// The method's spacing as the JSON report gives it: null for a method without one (its
/// method_options::beta is left empty), a number, or one number per layer.
inline json beta_json(const bilevel::method_options& settings) {
  if (settings.beta.empty()) return nullptr;
  return settings.beta.size() == 1 ? json(settings.beta.front()) : json(settings.beta);
}

/// A measured value as the JSON report gives it: to `digits` significant digits (reports are
/// read by people and tables; checkpoints keep every bit), null when not finite.
inline json reported(double value, int digits = 6) {
  if (!std::isfinite(value)) return nullptr;
  std::ostringstream text;
  text << std::setprecision(digits) << value;
  return std::stod(text.str());
}

/// --beta as the CSV gives it: empty for a method without a spacing, per-layer values
/// separated by ';' (the cells are separated by ',').
inline std::string beta_cell(const options& opts) {
  if (!bilevel::method_reads(opts.method, "beta")) return "";
  std::string cell = opts.beta;
  std::replace(cell.begin(), cell.end(), ',', ';');
  return cell;
}

/// The bytes of a matrix's or a vector's entries (for checksums).
template <class Container>
std::span<const std::uint8_t> as_bytes(const Container& values) {
  return {reinterpret_cast<const std::uint8_t*>(values.data()),
          std::size_t(values.size()) * sizeof(*values.data())};
}

/// One stderr line per epoch when the inner solver did not do what the method promises: samples
/// left unconverged at the solver's cap (docs/methods.md §5.6b), or AltMin layers whose codes
/// never moved.
inline void warn_inner_solver(Index epoch, const std::string& method,
                              const bilevel::epoch_report& report) {
  if (report.unconverged_share > 0)
    std::cerr << "mnist_mlp: warning: epoch " << epoch << ": the inner solver of " << method
              << " stopped at its cap before converging for " << 100 * report.unconverged_share
              << "% of the samples (raise --inner-iterations or --tolerance)\n";
  if (report.idle_layer_steps > 0)
    std::cerr << "mnist_mlp: warning: epoch " << epoch << ": in " << report.idle_layer_steps
              << " steps some layer of " << method
              << " got a zero gradient because none of its codes moved\n";
}

/// One JSON line on stdout; a line that cannot be written (a full disk, a closed pipe) ends
/// the run with an error rather than a run that looks successful.
inline void print_line(const json& line) {
  std::cout << line.dump() << std::endl;
  if (!std::cout) throw bilevel::data_error("cannot write the results to stdout");
}

/// The layers of --architecture (none for an MLP), checked before any data is read.
inline std::vector<bilevel::map_spec> architecture_maps(const options& opts) {
  if (opts.architecture.empty()) return {};
  try {
    return bilevel::parse_architecture(opts.architecture);
  } catch (const bilevel::config_error& e) {
    throw bilevel::config_error("--architecture " + opts.architecture + ": " + e.what());
  }
}

/// The classifier of `maps` on one-channel images of `rows` x `cols` (make_classifier).
template <class S, class Hidden>
bilevel::mlp<S, Hidden> image_program(const options& opts,
                                      const std::vector<bilevel::map_spec>& maps, Index rows,
                                      Index cols, const Hidden& hidden) {
  try {
    return bilevel::make_classifier<bilevel::mlp<S, Hidden>>(bilevel::image_shape{1, rows, cols},
                                                             maps, hidden);
  } catch (const bilevel::error& e) {
    throw bilevel::config_error("--architecture " + opts.architecture + ": " + e.what());
  }
}

/// Refuses a network whose parameters, gradient and optimizer state (Adam: two moments, SGD: a
/// velocity) alone exceed this machine's memory: the allocations would succeed, and the kernel
/// would kill the process when training first touched them, with no message. `parameters` is a
/// double: counted from --layers before anything is allocated, it may exceed Index.
inline void require_fits_in_memory(const options& opts, double parameters,
                                   std::size_t scalar_bytes) {
  const double copies = opts.optimizer == "adam" ? 4 : 3;
  const double needed = copies * parameters * double(scalar_bytes);
  const double physical = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  if (physical > 0 && needed > physical) {
    std::ostringstream message;
    message << (opts.architecture.empty() ? "--layers " + opts.layers
                                          : "--architecture " + opts.architecture)
            << ": the network's " << std::setprecision(3) << parameters << " parameters need "
            << std::fixed << std::setprecision(1) << needed / 1e9
            << " GB for themselves, their gradient and " << opts.optimizer
            << "'s state; this machine has " << physical / 1e9 << " GB";
    throw bilevel::config_error(message.str());
  }
}

template <class S, class Hidden>
int train(const options& opts, const Hidden& hidden, const processes& group) {
  // The layers and the method flags are checked before the data is read; an image program
  // takes its image size from the data.
  const std::vector<bilevel::map_spec> maps = architecture_maps(opts);
  std::optional<bilevel::mlp<S, Hidden>> perceptron;
  if (maps.empty()) {
    const auto sizes = parse_list<Index>(opts.layers, "--layers");
    double parameters = 0;  // (n_{k-1} + 1) n_k per layer, before allocating any
    for (std::size_t k = 1; k < sizes.size(); ++k)
      parameters += (double(sizes[k - 1]) + 1) * double(sizes[k]);
    require_fits_in_memory(opts, parameters, sizeof(S));
    try {
      perceptron.emplace(bilevel::make_mlp<S>(sizes, hidden));
    } catch (const bilevel::config_error& e) {
      throw bilevel::config_error("--layers " + opts.layers + ": " + e.what());
    }
  }
  const Index depth = perceptron ? perceptron->depth() : Index(maps.size());
  const bilevel::method_options method_flags = method_settings(opts);  // --beta parsed once
  auto method = bilevel::make_method<S>(opts.method, method_flags, depth);
  const auto mode =
      opts.step_mode == "native" ? bilevel::step_mode::native : bilevel::step_mode::gradient;
  if (mode == bilevel::step_mode::native && !method.has_native_step())
    throw bilevel::config_error("--step-mode native needs a method with its own step (mac, "
                                "lpom, fln, altmin), got " + opts.method);

  auto data = bilevel::load_mnist<S>(opts.data, perceptron ? perceptron->input_size() : 0);
  auto net = perceptron ? std::move(*perceptron)
                        : image_program<S>(opts, maps, data.train.rows, data.train.cols, hidden);
  if (!perceptron) require_fits_in_memory(opts, double(net.parameter_count()), sizeof(S));
  const Index pixels = data.train.images.rows(), classes = 10;
  bilevel::detail::require(net.input_size() == pixels, "setup", "the program's input size",
                           bilevel::detail::parts("the image size ", pixels), net.input_size());
  bilevel::detail::require(net.output_size() == classes, "setup", "the last layer's size",
                           "the number of classes (10)", net.output_size());
  const Index available = data.train.images.cols();
  // Compared without adding: both flags may be as large as Index allows.
  bilevel::detail::require(
      opts.train_samples <= available && opts.validation <= available - opts.train_samples,
      "setup", "--train-samples + --validation",
      bilevel::detail::parts("<= the training file's ", available, " images"),
      bilevel::detail::parts(opts.train_samples, " + ", opts.validation));
  bilevel::detail::require(opts.batch <= opts.train_samples, "setup", "--batch",
                           bilevel::detail::parts("<= --train-samples (", opts.train_samples, ")"),
                           opts.batch);
  // Every process must train and report on the same data: compare the files' checksums. A
  // checkpoint records them too, so that --resume refuses other data.
  flags_record flags{resumption_flags(opts)};
  for (const auto& [name, bytes] :
       {std::pair{"the training images (--data)", as_bytes(data.train.images)},
        std::pair{"the training labels (--data)", as_bytes(data.train.labels)},
        std::pair{"the test images (--data)", as_bytes(data.test.images)},
        std::pair{"the test labels (--data)", as_bytes(data.test.labels)}}) {
    group.require_same(bytes, name);
    flags.flags.push_back({name, std::to_string(bilevel::detail::crc32_of(bytes))});
  }

  // The images move into the data sets, and the training file's columns are split once: one
  // copy of every image is held while training.
  const auto [train_set, validation_set] = [&] {
    const auto all =
        bilevel::make_dataset<S>(std::move(data.train.images), data.train.labels, classes);
    return std::pair{bilevel::slice(all, 0, opts.train_samples),
                     bilevel::slice(all, available - opts.validation, opts.validation)};
  }();
  const auto test_set =
      bilevel::make_dataset<S>(std::move(data.test.images), data.test.labels, classes);

  bilevel::random_source init_random(opts.seed);
  net.initialize(bilevel::parse_init_scheme(opts.init), init_random);
  auto optimizer = make_optimizer<S>(opts, net.parameter_count(), net.weight_count());
  const auto schedule = make_schedule(opts);
  return group.with_stepper<S>(method, [&](auto& stepper) {
    bilevel::trainer trainer(net, stepper, optimizer, opts.batch, opts.seed + 1, mode);

    if (group.size() > 1 && trainer.native_steps()) {
      // Native steps need a sample in every shard, the epoch's last, partial batch included.
      const Index last = opts.train_samples % opts.batch;
      bilevel::detail::require(opts.batch >= group.size() && (last == 0 || last >= group.size()),
                               "setup", "--batch and the last batch (--train-samples % --batch)",
                               bilevel::detail::parts(">= the number of processes (", group.size(),
                                                       ") for native steps"),
                               bilevel::detail::parts(opts.batch, " and ", last));
    }

    bilevel::run_record record;
    const bool speak = group.root();  // one process prints and writes files
    if (speak && !opts.resume.empty())
      bilevel::load_checkpoint(opts.resume, net, optimizer, method, trainer.progress(), record,
                               flags);
    group.share(net, optimizer, method, trainer.progress(), record);
    csv_log csv(speak ? opts.csv : std::string(),
                {"epoch", "method", "beta", "lr", "train_error", "validation_error", "test_error", "loss",
                 "seconds", "samples_per_s", "inner_residual", "inner_energy",
                 "unconverged_share", "safeguarded_share", "idle_layer_steps"});
    if (!opts.resume.empty()) csv.keep_rows_until(trainer.epoch());
    const bool talk = speak && !opts.quiet;
    progress_bar bar(talk);
    if (talk)
      std::cerr << "mnist_mlp: " << method.name()
              << (trainer.native_steps() ? " (native steps)" : "") << ", layers " << structure(opts) << ", " << opts.activation << ", init " << opts.init
              << ", " << opts.optimizer << " " << schedule.describe() << ", batch " << opts.batch
              << ", " << train_set.size() << " training / " << validation_set.size()
              << " validation / " << test_set.size() << " test samples, " << opts.precision << ", "
              << Eigen::nbThreads() << " thread(s)"
              << (group.size() > 1 ? bilevel::detail::concat(" per process, ", group.size(),
                                                             " processes")
                                   : std::string())
              << '\n';

    if (!opts.resume.empty() && talk)
      std::cerr << "mnist_mlp: resumed from " << opts.resume << " after epoch " << trainer.epoch()
                << '\n';
    const json beta = beta_json(method_flags);
    json last;
    bilevel::run_callbacks<S> callbacks;
    callbacks.error = [&](const bilevel::dataset<S>& set) { return group.error(net, set, method); };
    callbacks.save = [&] {
      if (speak && !opts.save.empty())
        bilevel::save_checkpoint(opts.save, net, optimizer, method, trainer.progress(), record,
                                 flags);
    };
    callbacks.epoch_started = [&](Index epoch, double) { bar.start_epoch(epoch, opts.epochs); };
    callbacks.batch_done = [&](Index done, Index total, Index samples) {
      bar.batch(done, total, samples);
    };
    callbacks.epoch_finished = [&](const bilevel::epoch_result& epoch) {
      bar.clear();
      const bilevel::epoch_report& report = epoch.training;
      last = {{"epoch", epoch.epoch},
              {"method", method.name()},
              {"beta", beta},
              {"init", opts.init},
              {"activation", opts.activation},
              {"lr", epoch.learning_rate},
              {"train_error", reported(epoch.train_error)},
              {"validation_error", reported(epoch.validation_error)},
              {"test_error", reported(epoch.test_error)},
              {"loss", reported(report.loss)},
              {"seconds", reported(report.seconds, 4)},
              {"samples_per_s", reported(report.samples_per_second, 4)},
              {"inner_residual", reported(report.inner_residual, 3)},
              {"inner_energy", reported(report.inner_energy)},
              {"unconverged_share", reported(report.unconverged_share, 4)},
              {"safeguarded_share", reported(report.safeguarded_share, 4)},
              {"idle_layer_steps", report.idle_layer_steps}};
      if (speak) print_line(last);
      const auto text = [](double value) {
        return std::isfinite(value) ? (std::ostringstream() << std::setprecision(9) << value).str()
                                    : std::string();
      };
      csv.add({std::to_string(epoch.epoch), method.name(), beta_cell(opts), text(epoch.learning_rate),
               text(epoch.train_error), text(epoch.validation_error), text(epoch.test_error),
               text(report.loss), text(report.seconds), text(report.samples_per_second),
               text(report.inner_residual), text(report.inner_energy),
               text(report.unconverged_share), text(report.safeguarded_share),
               std::to_string(report.idle_layer_steps)});
      if (talk) {
        std::cerr << "epoch " << epoch.epoch << "/" << opts.epochs << "  loss " << report.loss
                  << "  train " << 100 * epoch.train_error << "%  validation "
                  << 100 * epoch.validation_error << "%  test " << 100 * epoch.test_error << "%  "
                  << report.seconds << " s (" << Index(report.samples_per_second)
                  << " samples/s)";
        if (std::isfinite(report.inner_residual))
          std::cerr << "  inner residual " << report.inner_residual;
        std::cerr << '\n';
      }
      if (speak && !opts.quiet) warn_inner_solver(epoch.epoch, method.name(), report);
    };
    bilevel::run_epochs(trainer,
                        {.train = &train_set, .test = &test_set, .validation = &validation_set},
                        {.epochs = opts.epochs,
                         .evaluate_train = true,
                         .schedule = schedule,
                         .save_every = opts.save_every},
                        record, callbacks);

    json summary = {{"summary", true},
                    {"method", method.name()},
                    {"beta", beta},
                    {"init", opts.init},
                    {"activation", opts.activation},
                    {"layers", structure(opts)},
                    {"epochs", opts.epochs},
                    {"batch", opts.batch},
                    {"optimizer", opts.optimizer},
                    {"lr", opts.lr},
                    {"step_mode", trainer.native_steps() ? "native" : "gradient"},
                    {"inner_start", method.inner_start_name().empty()
                                        ? json()
                                        : json(method.inner_start_name())},
                    {"inference", method.inference_name().empty()
                                      ? json()
                                      : json(method.inference_name())},
                    {"seed", opts.seed},
                    {"precision", opts.precision},
                    {"threads", Eigen::nbThreads()},
                    {"denormals", bilevel::denormals_flushed() ? "flushed" : "kept"},
                    {"processes", group.size()},
                    {"train_samples", train_set.size()},
                    {"train_seconds", reported(record.total_seconds, 4)},
                    {"initial_test_error", reported(record.initial_test_error)}};
    if (!last.is_null()) {
      summary["final_train_error"] = last["train_error"];
      summary["final_test_error"] = last["test_error"];
    }
    if (record.best_epoch > 0) {
      summary["best_epoch"] = record.best_epoch;
      summary["best_validation_error"] = reported(record.best_validation);
      summary["test_error_at_best_validation"] = reported(record.test_at_best);
    }
    if (speak && !opts.export_dir.empty()) bilevel::export_npy(opts.export_dir, net);
    if (speak) print_line(summary);
    return 0;
  });
}

/// Maps --activation to its pair once; everything after runs fully typed.
template <class S>
int dispatch_activation(const options& opts, const processes& group) {
  return bilevel::with_activation(opts.activation, {.leaky_slope = opts.leaky_slope},
                                  [&](const auto& pair) { return train<S>(opts, pair, group); });
}

}  // namespace mnist_mlp
