// mnist_mlp: trains a multi-layer perceptron on MNIST (or any idx data set of the same layout)
// with one of the library's methods. Progress goes to stderr; stdout gets one JSON object per
// epoch and a final summary object, so runs can be piped into tables and plots.
//
// Exit status: 0 on success, 2 for bad flags, 1 for bad data or a failed run.

#include <CLI/CLI.hpp>
#include <Eigen/Core>
#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

#include "bilevel/bilevel.hpp"
#include "bilevel/train/trainer.hpp"

namespace {

using json = nlohmann::json;
using bilevel::Index;

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
  bool nesterov = false;
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
};

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
      throw bilevel::config_error(what + " must be a comma-separated list of "
                                  "numbers, got '" + text + "'");
    values.push_back(value);
  }
  if (values.empty())
    throw bilevel::config_error(what + " must not be empty");
  return values;
}

/// The method chosen on the command line; one dispatch per batch.
template <class S>
class any_method {
 public:
  any_method(const options& opts, Index depth) {
    if (opts.method == "bp") {
      method_.template emplace<bilevel::bp<S>>();
    } else {
      const auto betas = parse_list<double>(opts.beta, "--beta");
      bilevel::detail::require(betas.size() == 1 || Index(betas.size()) == depth, "mnist_mlp",
                               "the number of --beta values",
                               bilevel::detail::concat("1 or one per layer (", depth, ")"),
                               betas.size());
      method_.template emplace<bilevel::fenchel_bp<S>>(std::vector<S>(betas.begin(), betas.end()));
    }
  }
  std::string name() const {
    return std::visit([](const auto& m) { return m.name(); }, method_);
  }
  template <class Program>
  bilevel::step_report gradient(const Program& net, const bilevel::MatrixCRef<S>& x,
                                const bilevel::MatrixCRef<S>& y, bilevel::Vector<S>& gradient) {
    return std::visit([&](auto& m) { return m.gradient(net, x, y, gradient); }, method_);
  }

 private:
  std::variant<bilevel::bp<S>, bilevel::fenchel_bp<S>> method_;
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

bilevel::lr_schedule<double> make_schedule(const options& opts) {
  using schedule = bilevel::lr_schedule<double>;
  if (opts.schedule == "step")
    return schedule::step_decay(opts.lr, opts.schedule_every, opts.schedule_factor);
  if (opts.schedule == "cosine") return schedule::cosine(opts.lr, opts.epochs);
  return schedule::constant(opts.lr);
}

json beta_json(const options& opts) {
  if (opts.method == "bp") return nullptr;
  const auto betas = parse_list<double>(opts.beta, "--beta");
  return betas.size() == 1 ? json(betas.front()) : json(betas);
}

template <class S, class Hidden>
int train(const options& opts, const Hidden& hidden) {
  const auto sizes = parse_list<Index>(opts.layers, "--layers");
  auto net = bilevel::make_mlp<S>(sizes, hidden);
  any_method<S> method(opts, net.depth());  // validates betas before the data is read

  const auto data = bilevel::load_mnist<S>(opts.data);
  const Index pixels = data.train.images.rows(), classes = 10;
  bilevel::detail::require(net.input_size() == pixels, "mnist_mlp", "the first --layers entry",
                           bilevel::detail::concat("the image size ", pixels), net.input_size());
  bilevel::detail::require(net.output_size() == classes, "mnist_mlp", "the last --layers entry",
                           "the number of classes (10)", net.output_size());
  const Index available = data.train.images.cols();
  bilevel::detail::require(opts.train_samples + opts.validation <= available, "mnist_mlp",
                           "--train-samples + --validation",
                           bilevel::detail::concat("<= the training file's ", available, " images"),
                           opts.train_samples + opts.validation);
  const auto all = bilevel::make_dataset<S>(data.train.images, data.train.labels, classes);
  const auto train_set = bilevel::slice(all, 0, opts.train_samples);
  const auto validation_set = bilevel::slice(all, available - opts.validation, opts.validation);
  const auto test_set = bilevel::make_dataset<S>(data.test.images, data.test.labels, classes);

  bilevel::random_source init_random(opts.seed);
  net.initialize(bilevel::parse_init_scheme(opts.init), init_random);
  any_optimizer<S> optimizer(opts, net.parameter_count(), net.weight_count());
  const auto schedule = make_schedule(opts);
  bilevel::trainer trainer(net, method, optimizer, opts.batch, opts.seed + 1);

  std::cerr << "mnist_mlp: " << method.name() << ", layers " << opts.layers << ", "
            << opts.activation << ", init " << opts.init << ", " << opts.optimizer << " "
            << schedule.describe() << ", batch " << opts.batch << ", " << train_set.size()
            << " training / " << validation_set.size() << " validation / " << test_set.size()
            << " test samples, " << opts.precision << ", " << Eigen::nbThreads() << " thread(s)\n";

  const double initial_test_error = bilevel::classification_error(net, test_set);
  double best_validation = 2, test_at_best = 2, total_seconds = 0;
  Index best_epoch = 0;
  json last;
  for (Index epoch = 1; epoch <= opts.epochs; ++epoch) {
    optimizer.set_learning_rate(S(schedule.at(epoch - 1)));
    const bilevel::epoch_report report = trainer.run_epoch(train_set);
    total_seconds += report.seconds;
    const double train_error = bilevel::classification_error(net, train_set);
    const double validation_error = bilevel::classification_error(net, validation_set);
    const double test_error = bilevel::classification_error(net, test_set);
    if (validation_set.size() > 0 && validation_error < best_validation) {
      best_validation = validation_error;
      test_at_best = test_error;
      best_epoch = epoch;
    }
    last = {{"epoch", epoch},
            {"method", method.name()},
            {"beta", beta_json(opts)},
            {"init", opts.init},
            {"activation", opts.activation},
            {"lr", schedule.at(epoch - 1)},
            {"train_error", train_error},
            {"validation_error", validation_set.size() > 0 ? json(validation_error) : json()},
            {"test_error", test_error},
            {"loss", report.loss},
            {"seconds", report.seconds},
            {"samples_per_s", report.samples_per_second}};
    std::cout << last.dump() << std::endl;
    std::cerr << "epoch " << epoch << "/" << opts.epochs << "  loss " << report.loss
              << "  train " << 100 * train_error << "%  validation "
              << 100 * validation_error << "%  test " << 100 * test_error << "%  "
              << report.seconds << " s (" << Index(report.samples_per_second)
              << " samples/s)\n";
  }
  json summary = {{"summary", true},
                  {"method", method.name()},
                  {"beta", beta_json(opts)},
                  {"init", opts.init},
                  {"activation", opts.activation},
                  {"layers", opts.layers},
                  {"epochs", opts.epochs},
                  {"batch", opts.batch},
                  {"seed", opts.seed},
                  {"precision", opts.precision},
                  {"threads", Eigen::nbThreads()},
                  {"train_seconds", total_seconds},
                  {"initial_test_error", initial_test_error}};
  if (!last.is_null()) {
    summary["final_train_error"] = last["train_error"];
    summary["final_test_error"] = last["test_error"];
  }
  if (best_epoch > 0) {
    summary["best_epoch"] = best_epoch;
    summary["best_validation_error"] = best_validation;
    summary["test_error_at_best_validation"] = test_at_best;
  }
  std::cout << summary.dump() << std::endl;
  return 0;
}

/// Maps --activation to its pair type once; everything after runs fully typed.
template <class S>
int dispatch_activation(const options& opts) {
  const std::string& name = opts.activation;
  if (name == "relu") return train<S>(opts, bilevel::relu{});
  if (name == "leaky_relu") return train<S>(opts, bilevel::leaky_relu(opts.leaky_slope));
  if (name == "hard_sigmoid") return train<S>(opts, bilevel::hard_sigmoid{});
  if (name == "hard_tanh") return train<S>(opts, bilevel::hard_tanh{});
  if (name == "sigmoid") return train<S>(opts, bilevel::sigmoid{});
  if (name == "tanh") return train<S>(opts, bilevel::tanh_pair{});
  if (name == "softmax") return train<S>(opts, bilevel::softmax{});
  return train<S>(opts, bilevel::identity{});
}

}  // namespace

int main(int argc, char** argv) {
  options opts;
  CLI::App app{"Train an MLP on MNIST-format idx data with BP or Fenchel BP (bilevel library)",
               "mnist_mlp"};
  app.add_option("--data", opts.data,
                 "Directory with train-/t10k- images and labels (idx, plain or .gz)")
      ->capture_default_str();
  app.add_option("--method", opts.method, "Training method")
      ->check(CLI::IsMember({"bp", "fenbp"}))
      ->capture_default_str();
  app.add_option("--beta", opts.beta,
                 "Fenchel BP spacing per sample: one value, or one per layer (comma list)")
      ->capture_default_str();
  app.add_option("--init", opts.init, "Weight initialisation: glorot, he, negative")
      ->check(CLI::IsMember({"glorot", "he", "negative"}))
      ->capture_default_str();
  app.add_option("--epochs", opts.epochs, "Number of epochs")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--batch", opts.batch, "Minibatch size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--lr", opts.lr, "Learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--optimizer", opts.optimizer, "adam, sgd, momentum or nesterov")
      ->check(CLI::IsMember({"adam", "sgd", "momentum", "nesterov"}))
      ->capture_default_str();
  app.add_option("--momentum", opts.momentum, "Momentum for --optimizer momentum/nesterov")
      ->check(CLI::Range(0.0, 0.999999))
      ->capture_default_str();
  app.add_option("--weight-decay", opts.weight_decay, "L2 weight decay on the weights (not biases)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--schedule", opts.schedule,
                 "Learning-rate schedule: constant, step (x --schedule-factor every "
                 "--schedule-every epochs) or cosine (to 0 over --epochs)")
      ->check(CLI::IsMember({"constant", "step", "cosine"}))
      ->capture_default_str();
  app.add_option("--schedule-every", opts.schedule_every, "Epochs between step decays")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--schedule-factor", opts.schedule_factor, "Factor of each step decay")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--layers", opts.layers, "Layer sizes, input first, comma-separated")
      ->capture_default_str();
  app.add_option("--activation", opts.activation, "Hidden activation pair")
      ->check(CLI::IsMember({"relu", "leaky_relu", "hard_sigmoid", "hard_tanh", "sigmoid", "tanh",
                             "softmax", "identity"}))
      ->capture_default_str();
  app.add_option("--leaky-slope", opts.leaky_slope, "Slope of leaky_relu for a < 0, in (0, 1)")
      ->capture_default_str();
  app.add_option("--seed", opts.seed, "Seed of initialisation and shuffling")->capture_default_str();
  app.add_option("--threads", opts.threads, "Threads for Eigen's matrix products")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--train-samples", opts.train_samples,
                 "Training images, taken from the start of the training file")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--validation", opts.validation,
                 "Validation images, taken from the end of the training file")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--precision", opts.precision, "Scalar type: float or double")
      ->check(CLI::IsMember({"float", "double"}))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "mnist_mlp: " << e.what() << " (see --help)\n";
    return 2;
  }

  try {
    Eigen::setNbThreads(opts.threads);
    return opts.precision == "double" ? dispatch_activation<double>(opts)
                                      : dispatch_activation<float>(opts);
  } catch (const bilevel::config_error& e) {
    std::cerr << "mnist_mlp: " << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "mnist_mlp: " << e.what() << '\n';
    return 1;
  }
}
