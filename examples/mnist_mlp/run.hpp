#pragma once
// The typed part of the trainer: given the scalar type and the hidden activation pair, build the
// program, the method and the optimizer, train, and print one JSON object per epoch.

#include <Eigen/Core>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <limits>
#include <iostream>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "bilevel/bilevel.hpp"
#include "bilevel/train/trainer.hpp"
#include "options.hpp"
#include "processes.hpp"
#include "report.hpp"

namespace mnist_mlp {

using json = nlohmann::json;

/// The method chosen on the command line, with its parameters; one dispatch per batch.
template <class S>
class any_method {
 public:
  any_method(const options& opts, Index depth) {
    const std::string& name = opts.method;
    if (name == "bp") {
      method_.template emplace<bilevel::bp<S>>();
    } else if (name == "fenbp") {
      const auto betas = parse_list<double>(opts.beta, "--beta");
      bilevel::detail::require(betas.size() == 1 || Index(betas.size()) == depth, "setup",
                               "the number of --beta values",
                               bilevel::detail::concat("1 or one per layer (", depth, ")"),
                               betas.size());
      method_.template emplace<bilevel::fenchel_bp<S>>(std::vector<S>(betas.begin(), betas.end()));
    } else if (name == "chl") {
      typename bilevel::chl<S>::settings settings;
      settings.beta = S(single_beta(opts));
      settings.gamma = S(opts.gamma);
      if (opts.inner_iterations > 0) settings.stopping.max_iterations = opts.inner_iterations;
      if (opts.tolerance > 0) settings.stopping.tolerance = S(opts.tolerance);
      if (!opts.inner_start.empty()) settings.start = inner_start(opts);
      method_.template emplace<bilevel::chl<S>>(settings);
    } else if (name == "ep") {
      typename bilevel::ep<S>::settings settings;
      settings.beta = S(single_beta(opts));
      if (opts.inner_iterations > 0) settings.free_iterations = opts.inner_iterations;
      if (opts.inner_step > 0) settings.step = S(opts.inner_step);
      settings.nudged_iterations = opts.nudged_iterations;
      settings.symmetric = !opts.one_sided;
      settings.random_sign = opts.one_sided;
      settings.seed = opts.seed;
      if (opts.ep_converged) {
        settings.mode = bilevel::ep<S>::relaxation::converged;
        for (auto* phase : {&settings.free_stopping, &settings.nudged_stopping}) {
          if (opts.tolerance > 0) phase->tolerance = S(opts.tolerance);
          if (opts.inner_iterations > 0) phase->max_iterations = opts.inner_iterations;
        }
      }
      if (opts.ep_particles) settings.particles = opts.train_samples;
      if (!opts.layer_scales.empty())
        for (const double scale : parse_list<double>(opts.layer_scales, "--layer-scales"))
          settings.layer_scales.push_back(S(scale));
      method_.template emplace<bilevel::ep<S>>(settings);
    } else if (name == "pcn") {
      typename bilevel::pcn<S>::settings settings;
      settings.spacing = S(single_beta(opts));
      if (opts.inner_iterations > 0) settings.stopping.max_iterations = opts.inner_iterations;
      if (opts.inner_step > 0) settings.inference_rate = S(opts.inner_step);
      if (opts.tolerance > 0) settings.stopping.tolerance = S(opts.tolerance);
      if (!opts.inner_start.empty()) settings.start = inner_start(opts);
      method_.template emplace<bilevel::pcn<S>>(settings);
    } else if (name == "zil") {
      method_.template emplace<bilevel::pcn<S>>(bilevel::pcn<S>::zil());
    } else if (name == "mac") {
      typename bilevel::mac<S>::settings settings;
      settings.mu = S(opts.mu);
      settings.mu_growth = S(opts.mu_growth);
      if (opts.inner_iterations > 0) settings.z_stopping.max_iterations = opts.inner_iterations;
      if (opts.tolerance > 0) settings.z_stopping.tolerance = S(opts.tolerance);
      if (!opts.inner_start.empty()) settings.start = inner_start(opts);
      method_.template emplace<bilevel::mac<S>>(settings);
    } else if (name == "altmin") {
      typename bilevel::altmin<S>::settings settings;
      settings.mu = S(opts.mu);
      if (opts.inner_iterations > 0) settings.code_iterations = opts.inner_iterations;
      if (opts.inner_step > 0) settings.code_rate = S(opts.inner_step);
      settings.optimizer.learning_rate = S(opts.lr);
      method_.template emplace<bilevel::altmin<S>>(settings);
    } else {  // lpom, fln
      auto settings = name == "fln" ? bilevel::fln<S>::default_settings()
                                    : bilevel::lifted_settings<S>{};
      const auto lambdas = parse_list<double>(opts.lambda, "--lambda");
      settings.lambda.assign(lambdas.begin(), lambdas.end());
      if (opts.inner_iterations > 0) settings.stopping.max_iterations = opts.inner_iterations;
      if (opts.tolerance > 0) settings.stopping.tolerance = S(opts.tolerance);
      if (!opts.inner_start.empty()) settings.start = inner_start(opts);
      if (name == "fln")
        method_.template emplace<bilevel::fln<S>>(settings);
      else
        method_.template emplace<bilevel::lpom<S>>(settings);
    }
    bilevel::detail::require(opts.step_mode == "gradient" || has_native_step(), "setup",
                             "--step-mode native", "a method with its own step (mac, lpom, fln, altmin)",
                             name);
  }

  std::string name() const {
    return std::visit([](const auto& m) { return m.name(); }, method_);
  }

  /// Where the method's inner solve starts ("forward" or "first-order"), or "" without one.
  std::string inner_start_name() const {
    return std::visit(
        [](const auto& m) -> std::string {
          if constexpr (requires { m.config().start; })
            return m.config().start == bilevel::inner_start::first_order ? "first-order"
                                                                          : "forward";
          else
            return "";
        },
        method_);
  }

  bool has_native_step() const {
    return std::visit(
        [](const auto& m) {
          using M = std::decay_t<decltype(m)>;
          return requires(M& method, dummy_program& net, const bilevel::Matrix<S>& b) {
            method.train_step(net, b, b);
          };
        },
        method_);
  }

  template <class Program>
  bilevel::step_report gradient(const Program& net, const bilevel::MatrixCRef<S>& x,
                                const bilevel::MatrixCRef<S>& y, bilevel::Vector<S>& gradient) {
    return std::visit([&](auto& m) { return m.gradient(net, x, y, gradient); }, method_);
  }

  /// The same with the batch's sample indices, for methods that keep a state per training
  /// example (EP's persistent particles); the others ignore them.
  template <class Program>
  bilevel::step_report gradient(const Program& net, const bilevel::MatrixCRef<S>& x,
                                const bilevel::MatrixCRef<S>& y, std::span<const Index> samples,
                                bilevel::Vector<S>& gradient) {
    return std::visit(
        [&](auto& m) {
          if constexpr (bilevel::SampleIndexedMethod<std::decay_t<decltype(m)>, Program>)
            return m.gradient(net, x, y, samples, gradient);
          else
            return m.gradient(net, x, y, gradient);
        },
        method_);
  }

  /// The native step; `shards` averages its weight steps over a batch split over processes.
  template <class Program, bilevel::BatchReduction<S> Reduction = bilevel::whole_batch>
  bilevel::step_report train_step(Program& net, const bilevel::MatrixCRef<S>& x,
                                  const bilevel::MatrixCRef<S>& y, const Reduction& shards = {}) {
    return std::visit(
        [&](auto& m) -> bilevel::step_report {
          if constexpr (bilevel::ShardableStepMethod<std::decay_t<decltype(m)>, Program>)
            return m.train_step(net, x, y, shards);
          else
            throw bilevel::config_error("mnist_mlp: " + m.name() + " has no native step");
        },
        method_);
  }

  /// The learning-rate schedule reaches methods with weight optimizers of their own (AltMin).
  void set_learning_rate(S lr) {
    std::visit(
        [lr](auto& m) {
          if constexpr (requires { m.set_learning_rate(lr); }) m.set_learning_rate(lr);
        },
        method_);
  }

  void save_state(bilevel::state_writer& out) const {
    std::visit([&](const auto& m) { m.save_state(out); }, method_);
  }
  void load_state(bilevel::state_reader& in) {
    std::visit([&](auto& m) { m.load_state(in); }, method_);
  }

  /// EP predicts by free relaxation; every other method by the forward pass.
  template <class Program>
  void predict(const Program& net, const bilevel::MatrixCRef<S>& x, bilevel::Matrix<S>& output) {
    std::visit(
        [&](auto& m) {
          if constexpr (bilevel::PredictingMethod<std::decay_t<decltype(m)>, Program>) {
            m.predict(net, x, output);
          } else {
            net.forward(x, state_);
            output.swap(state_.z.back());
          }
        },
        method_);
  }

 private:
  using dummy_program = bilevel::mlp<S, bilevel::relu>;

  static bilevel::inner_start inner_start(const options& opts) {
    return opts.inner_start == "first-order" ? bilevel::inner_start::first_order
                                             : bilevel::inner_start::forward;
  }

  static double single_beta(const options& opts) {
    const auto betas = parse_list<double>(opts.beta, "--beta");
    bilevel::detail::require(betas.size() == 1, "setup", "--beta for " + opts.method,
                             "a single value", opts.beta);
    return betas.front();
  }

  std::variant<bilevel::bp<S>, bilevel::fenchel_bp<S>, bilevel::chl<S>, bilevel::ep<S>,
               bilevel::pcn<S>, bilevel::mac<S>, bilevel::lpom<S>, bilevel::fln<S>,
               bilevel::altmin<S>>
      method_;
  bilevel::forward_state<S> state_;
};

/// The optimizer chosen on the command line; one dispatch per step.
template <class S>
class any_optimizer {
 public:
  any_optimizer(const options& opts, Index parameters, Index decayed)
      : optimizer_(make(opts, parameters, decayed)) {}
  void step(Eigen::Ref<bilevel::Vector<S>> params, const bilevel::Vector<S>& gradient) {
    std::visit([&](auto& o) { o.step(params, gradient); }, optimizer_);
  }
  void set_learning_rate(S lr) {
    std::visit([&](auto& o) { o.set_learning_rate(lr); }, optimizer_);
  }
  void save_state(bilevel::state_writer& out) const {
    std::visit([&](const auto& o) { o.save_state(out); }, optimizer_);
  }
  void load_state(bilevel::state_reader& in) {
    std::visit([&](auto& o) { o.load_state(in); }, optimizer_);
  }

 private:
  using variant = std::variant<bilevel::adam<S>, bilevel::sgd<S>>;
  static variant make(const options& opts, Index parameters, Index decayed) {
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
  variant optimizer_;
};

/// What the trainer's report carries across epochs: saved in checkpoints so that a resumed run
/// reports the same best epoch and totals as an uninterrupted one.
struct run_record {
  double initial_test_error = 0;
  double best_validation = 2;
  double test_at_best = 2;
  double total_seconds = 0;
  Index best_epoch = 0;

  void save_state(bilevel::state_writer& out) const {
    out.write_text("mnist_mlp run");
    for (const double value : {initial_test_error, best_validation, test_at_best, total_seconds})
      out.write_f64(value);
    out.write_index(best_epoch);
  }
  void load_state(bilevel::state_reader& in) {
    in.expect_text("mnist_mlp run", "component");
    run_record loaded;
    // Errors are fractions; 2 marks "no validation error yet".
    loaded.initial_test_error = in.read_finite("initial test error", 0, 1);
    loaded.best_validation = in.read_finite("best validation error", 0, 2);
    loaded.test_at_best = in.read_finite("test error at the best validation error", 0, 2);
    loaded.total_seconds = in.read_finite("training seconds", 0, 1e12);
    loaded.best_epoch = in.read_count("best epoch");
    *this = loaded;
  }
};

inline bilevel::lr_schedule<double> make_schedule(const options& opts) {
  using schedule = bilevel::lr_schedule<double>;
  if (opts.schedule == "step")
    return schedule::step_decay(opts.lr, opts.schedule_every, opts.schedule_factor);
  if (opts.schedule == "cosine") return schedule::cosine(opts.lr, opts.epochs);
  return schedule::constant(opts.lr);
}

inline json beta_json(const options& opts) {
  if (opts.method != "fenbp" && opts.method != "chl" && opts.method != "ep" &&
      opts.method != "pcn")
    return nullptr;
  const auto betas = parse_list<double>(opts.beta, "--beta");
  return betas.size() == 1 ? json(betas.front()) : json(betas);
}

inline json finite_or_null(double value) { return std::isfinite(value) ? json(value) : json(); }

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

template <class S, class Hidden>
int train(const options& opts, const Hidden& hidden, const processes& group) {
  const auto sizes = parse_list<Index>(opts.layers, "--layers");
  auto net = [&] {
    try {
      return bilevel::make_mlp<S>(sizes, hidden);
    } catch (const bilevel::config_error& e) {
      throw bilevel::config_error("--layers " + opts.layers + ": " + e.what());
    }
  }();
  any_method<S> method(opts, net.depth());  // validates method flags before the data is read
  const auto mode =
      opts.step_mode == "native" ? bilevel::step_mode::native : bilevel::step_mode::gradient;

  const auto data = bilevel::load_mnist<S>(opts.data, net.input_size());
  const Index pixels = data.train.images.rows(), classes = 10;
  bilevel::detail::require(net.input_size() == pixels, "setup", "the first --layers entry",
                           bilevel::detail::concat("the image size ", pixels), net.input_size());
  bilevel::detail::require(net.output_size() == classes, "setup", "the last --layers entry",
                           "the number of classes (10)", net.output_size());
  const Index available = data.train.images.cols();
  // Compared without adding: both flags may be as large as Index allows.
  bilevel::detail::require(
      opts.train_samples <= available && opts.validation <= available - opts.train_samples,
      "setup", "--train-samples + --validation",
      bilevel::detail::concat("<= the training file's ", available, " images"),
      bilevel::detail::concat(opts.train_samples, " + ", opts.validation));
  const auto all = bilevel::make_dataset<S>(data.train.images, data.train.labels, classes);
  const auto train_set = bilevel::slice(all, 0, opts.train_samples);
  const auto validation_set = bilevel::slice(all, available - opts.validation, opts.validation);
  const auto test_set = bilevel::make_dataset<S>(data.test.images, data.test.labels, classes);
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

  bilevel::random_source init_random(opts.seed);
  net.initialize(bilevel::parse_init_scheme(opts.init), init_random);
  any_optimizer<S> optimizer(opts, net.parameter_count(), net.weight_count());
  const auto schedule = make_schedule(opts);
  return group.with_stepper<S>(method, [&](auto& stepper) {
    bilevel::trainer trainer(net, stepper, optimizer, opts.batch, opts.seed + 1, mode);

    if (group.size() > 1 && trainer.native_steps()) {
      // Native steps need a sample in every shard, the epoch's last, partial batch included.
      const Index last = opts.train_samples % opts.batch;
      bilevel::detail::require(opts.batch >= group.size() && (last == 0 || last >= group.size()),
                               "setup", "--batch and the last batch (--train-samples % --batch)",
                               bilevel::detail::concat(">= the number of processes (", group.size(),
                                                       ") for native steps"),
                               bilevel::detail::concat(opts.batch, " and ", last));
    }

    run_record record;
    const bool speak = group.root();  // one process prints and writes files
    const auto save = [&] {
      if (speak && !opts.save.empty())
        bilevel::save_checkpoint(opts.save, net, optimizer, method, trainer.progress(), record,
                                 flags);
    };
    if (speak && !opts.resume.empty())
      bilevel::load_checkpoint(opts.resume, net, optimizer, method, trainer.progress(), record,
                               flags);
    group.share(net, optimizer, method, trainer.progress(), record);
    if (opts.resume.empty()) record.initial_test_error = group.error(net, test_set, method);
    save();  // at once: an unwritable --save path fails now, not after the first epoch
    csv_log csv(speak ? opts.csv : std::string(),
                {"epoch", "method", "lr", "train_error", "validation_error", "test_error", "loss",
                 "seconds", "samples_per_s", "inner_residual", "inner_energy",
                 "unconverged_share", "safeguarded_share", "idle_layer_steps"});
    if (!opts.resume.empty()) csv.keep_rows_until(trainer.epoch());
    const bool talk = speak && !opts.quiet;
    progress_bar bar(talk);
    if (talk)
      std::cerr << "mnist_mlp: " << method.name()
              << (trainer.native_steps() ? " (native steps)" : "") << ", layers " << opts.layers << ", " << opts.activation << ", init " << opts.init
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
    const json beta = beta_json(opts);
    json last;
    for (Index epoch = trainer.epoch() + 1; epoch <= opts.epochs; ++epoch) {
      optimizer.set_learning_rate(S(schedule.at(epoch - 1)));
      method.set_learning_rate(S(schedule.at(epoch - 1)));
      bar.start_epoch(epoch, opts.epochs);
      const bilevel::epoch_report report =
          trainer.run_epoch(train_set, [&](Index done, Index total, Index samples) {
            bar.batch(done, total, samples);
          });
      bar.clear();
      record.total_seconds += report.seconds;
      const double train_error = group.error(net, train_set, method);
      const double validation_error = group.error(net, validation_set, method);
      const double test_error = group.error(net, test_set, method);
      if (validation_set.size() > 0 && validation_error < record.best_validation) {
        record.best_validation = validation_error;
        record.test_at_best = test_error;
        record.best_epoch = epoch;
      }
      if (epoch % opts.save_every == 0 || epoch == opts.epochs) save();
      last = {{"epoch", epoch},
              {"method", method.name()},
              {"beta", beta},
              {"init", opts.init},
              {"activation", opts.activation},
              {"lr", schedule.at(epoch - 1)},
              {"train_error", train_error},
              {"validation_error", finite_or_null(validation_error)},
              {"test_error", test_error},
              {"loss", report.loss},
              {"seconds", report.seconds},
              {"samples_per_s", report.samples_per_second},
              {"inner_residual", finite_or_null(report.inner_residual)},
              {"inner_energy", finite_or_null(report.inner_energy)},
              {"unconverged_share", report.unconverged_share},
              {"safeguarded_share", finite_or_null(report.safeguarded_share)},
              {"idle_layer_steps", report.idle_layer_steps}};
      if (speak) print_line(last);
      const auto text = [](double value) {
        return std::isfinite(value) ? (std::ostringstream() << std::setprecision(9) << value).str()
                                    : std::string();
      };
      csv.add({std::to_string(epoch), method.name(), text(schedule.at(epoch - 1)),
               text(train_error), text(validation_error), text(test_error), text(report.loss),
               text(report.seconds), text(report.samples_per_second), text(report.inner_residual),
               text(report.inner_energy), text(report.unconverged_share),
               text(report.safeguarded_share), std::to_string(report.idle_layer_steps)});
      if (talk) {
        std::cerr << "epoch " << epoch << "/" << opts.epochs << "  loss " << report.loss
                  << "  train " << 100 * train_error << "%  validation " << 100 * validation_error
                  << "%  test " << 100 * test_error << "%  " << report.seconds << " s ("
                  << Index(report.samples_per_second) << " samples/s)";
        if (std::isfinite(report.inner_residual))
          std::cerr << "  inner residual " << report.inner_residual;
        std::cerr << '\n';
      }
      if (speak && !opts.quiet) warn_inner_solver(epoch, method.name(), report);
    }
    json summary = {{"summary", true},
                    {"method", method.name()},
                    {"beta", beta},
                    {"init", opts.init},
                    {"activation", opts.activation},
                    {"layers", opts.layers},
                    {"epochs", opts.epochs},
                    {"batch", opts.batch},
                    {"optimizer", opts.optimizer},
                    {"lr", opts.lr},
                    {"step_mode", trainer.native_steps() ? "native" : "gradient"},
                    {"inner_start", method.inner_start_name().empty()
                                        ? json()
                                        : json(method.inner_start_name())},
                    {"seed", opts.seed},
                    {"precision", opts.precision},
                    {"threads", Eigen::nbThreads()},
                    {"processes", group.size()},
                    {"train_samples", train_set.size()},
                    {"train_seconds", record.total_seconds},
                    {"initial_test_error", record.initial_test_error}};
    if (!last.is_null()) {
      summary["final_train_error"] = last["train_error"];
      summary["final_test_error"] = last["test_error"];
    }
    if (record.best_epoch > 0) {
      summary["best_epoch"] = record.best_epoch;
      summary["best_validation_error"] = record.best_validation;
      summary["test_error_at_best_validation"] = record.test_at_best;
    }
    if (speak) print_line(summary);
    return 0;
  });
}

/// Maps --activation to its pair type once; everything after runs fully typed.
template <class S>
int dispatch_activation(const options& opts, const processes& group) {
  const std::string& name = opts.activation;
  if (name == "relu") return train<S>(opts, bilevel::relu{}, group);
  if (name == "leaky_relu") return train<S>(opts, bilevel::leaky_relu(opts.leaky_slope), group);
  if (name == "hard_sigmoid") return train<S>(opts, bilevel::hard_sigmoid{}, group);
  if (name == "hard_tanh") return train<S>(opts, bilevel::hard_tanh{}, group);
  if (name == "sigmoid") return train<S>(opts, bilevel::sigmoid{}, group);
  if (name == "tanh") return train<S>(opts, bilevel::tanh_pair{}, group);
  if (name == "softmax") return train<S>(opts, bilevel::softmax{}, group);
  return train<S>(opts, bilevel::identity{}, group);
}

}  // namespace mnist_mlp
