// ep_mnist: Scellier & Bengio's equilibrium propagation experiment on MNIST (784-500-10) with
// the settings of the authors' code (docs/methods.md §7; methods/ep.hpp, paper_settings):
// rho = clip(s, 0, 1) with states clipped to [0, 1], cost ||s_out - y||^2 (here 1/2 ||.||^2
// with twice the beta and the rates: the same steps), epsilon 0.5, 20 free and 4 nudged steps,
// beta 0.5 with a random sign per batch, rates 0.1 and 0.05 for layers 1 and 2, persistent
// particles, batch 20 in fixed order, Glorot uniform weights and zero biases, training on the
// first 50,000 training images. Float, as the code's Theano settings.
//
// Three errors per epoch, which measure different things:
// - train_error: the fraction misclassified at the end of each training batch's free phase
//   (from its persistent particle, before the update), a running mean over the epoch, as the
//   code reports it;
// - validation_error: training images 50,001-60,000, each relaxed for 20 free steps from its
//   own persistent particle, carried across epochs: the code's held-out error (Scellier & Bengio
//   report <= 3%);
// - test_error: the 10,000 test images, each free phase relaxed to convergence from 0 (EP's
//   converged mode): the stricter measurement, which the code never makes; also the validation
//   images relaxed that way (validation_error_converged).
// stdout: one JSON object per epoch; stderr: progress. Exit status 0 on success.

#include <CLI/CLI.hpp>
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "bilevel/bilevel.hpp"
#include "bilevel/train/trainer.hpp"

namespace {

using S = float;
using bilevel::Index;
using net_type = bilevel::program<S, bilevel::mse, bilevel::hard_sigmoid>;

/// Held-out errors of one relaxation: the fraction misclassified, the samples a converged
/// relaxation left at its cap, and the most free steps a batch took.
struct held_out {
  double error = 0;
  Index unconverged = 0;
  Index most_steps = 0;
};

/// `set` in batches of `batch` columns in order, each relaxed by method.predict: from the
/// persistent particles of examples first_sample, first_sample + 1, ... when `persistent`, from
/// 0 otherwise.
held_out evaluate(const net_type& net, const bilevel::dataset<S>& set, bilevel::ep<S>& method,
                  Index batch, bool persistent, Index first_sample) {
  std::vector<Index> samples(std::size_t(set.size()));
  std::iota(samples.begin(), samples.end(), first_sample);
  bilevel::Matrix<S> output;
  held_out result;
  Index correct = 0;
  for (Index begin = 0; begin < set.size(); begin += batch) {
    const Index count = std::min(batch, set.size() - begin);
    const auto x = set.x.middleCols(begin, count);
    if (persistent)
      method.predict(net, x, std::span<const Index>(samples).subspan(std::size_t(begin),
                                                                     std::size_t(count)),
                     output);
    else
      method.predict(net, x, output);
    correct += bilevel::count_correct<S>(output, set.y.middleCols(begin, count));
    result.unconverged += method.last_unconverged();
    result.most_steps = std::max(result.most_steps, method.last_free_iterations());
  }
  result.error = 1 - double(correct) / double(set.size());
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  std::string data = "data/mnist";
  Index epochs = 25, train_samples = 50000, validation_samples = 10000, test_samples = 10000;
  std::uint64_t seed = 1;
  int threads = 1;
  bool quiet = false;
  CLI::App app{"Scellier & Bengio's EP on MNIST 784-500-10 with their code's settings",
               "ep_mnist"};
  app.add_option("--data", data, "MNIST directory (idx files)")->capture_default_str();
  app.add_option("--epochs", epochs, "Epochs (the code: 25)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--train-samples", train_samples, "Training images, the first ones of the file")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--validation", validation_samples,
                 "Validation images, those right after the training images")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--test-samples", test_samples, "Test images, the first ones of the test file")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--seed", seed, "Seed of the weights and of beta's signs")->capture_default_str();
  app.add_option("--threads", threads, "Threads for Eigen's products")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_flag("--quiet", quiet, "No progress on stderr");
  CLI11_PARSE(app, argc, argv);

  try {
    Eigen::setNbThreads(threads);
    const auto files = bilevel::load_mnist<S>(data);
    const auto all = bilevel::make_dataset<S>(files.train.images, files.train.labels, 10);
    bilevel::detail::require(train_samples + validation_samples <= all.size(), "ep_mnist",
                             "--train-samples + --validation",
                             bilevel::detail::parts("<= ", all.size()),
                             train_samples + validation_samples);
    const auto train_set = bilevel::slice(all, 0, train_samples);
    const auto validation_set = bilevel::slice(all, train_samples, validation_samples);
    const auto full_test = bilevel::make_dataset<S>(files.test.images, files.test.labels, 10);
    const auto test_set =
        bilevel::slice(full_test, 0, std::min(test_samples, full_test.size()));

    net_type net({784, 500, 10}, {bilevel::hard_sigmoid{}, bilevel::hard_sigmoid{}});
    bilevel::random_source random(seed);
    net.initialize(bilevel::init_scheme::glorot_uniform, random);  // biases 0
    // One particle per training and validation image (ids 0 .. train + validation - 1).
    bilevel::ep<S> method(
        bilevel::ep<S>::paper_settings(1, train_samples + validation_samples, seed));
    bilevel::sgd<S> optimizer({1.0f}, net.parameter_count(), net.weight_count());
    bilevel::trainer train(net, method, optimizer, 20, seed);
    train.set_sample_order(bilevel::sample_order::fixed);

    bilevel::ep<S>::settings relaxed_settings;
    relaxed_settings.mode = bilevel::ep<S>::relaxation::converged;
    relaxed_settings.free_stopping = {1e-4f, 5000};
    bilevel::ep<S> relaxed(relaxed_settings);

    if (!quiet)
      std::cerr << "ep_mnist: 784-500-10 hard sigmoid, " << train_set.size() << " training / "
                << validation_set.size() << " validation / " << test_set.size()
                << " test images, float, " << Eigen::nbThreads() << " thread(s)\n";
    double total_seconds = 0;
    for (Index epoch = 1; epoch <= epochs; ++epoch) {
      const bilevel::epoch_report report = train.run_epoch(train_set);
      total_seconds += report.seconds;
      const auto start = std::chrono::steady_clock::now();
      const held_out validation =
          evaluate(net, validation_set, method, 20, true, train_set.size());
      // Small batches: a batch relaxes until its slowest sample has converged.
      const held_out validation_converged =
          evaluate(net, validation_set, relaxed, 100, false, 0);
      const held_out test = evaluate(net, test_set, relaxed, 100, false, 0);
      const double evaluation_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::printf(
          "{\"epoch\":%lld,\"train_error\":%.6f,\"validation_error\":%.6f,"
          "\"validation_error_converged\":%.6f,\"test_error\":%.6f,\"unconverged\":%lld,"
          "\"most_free_steps\":%lld,\"loss\":%.6f,\"seconds\":%.2f,"
          "\"evaluation_seconds\":%.2f}\n",
          static_cast<long long>(epoch), report.running_error, validation.error,
          validation_converged.error, test.error,
          static_cast<long long>(validation_converged.unconverged + test.unconverged),
          static_cast<long long>(std::max(validation_converged.most_steps, test.most_steps)),
          report.loss, report.seconds, evaluation_seconds);
      std::fflush(stdout);
      if (!quiet)
        std::cerr << "epoch " << epoch << "/" << epochs << "  train " << 100 * report.running_error
                  << "%  validation (persistent, 20 steps) " << 100 * validation.error
                  << "%  validation (converged from 0) " << 100 * validation_converged.error
                  << "%  test (converged from 0) " << 100 * test.error << "%  "
                  << report.seconds << " s + " << evaluation_seconds << " s evaluation\n";
    }
    std::printf("{\"summary\":true,\"epochs\":%lld,\"train_seconds\":%.1f}\n",
                static_cast<long long>(epochs), total_seconds);
    return 0;
  } catch (const bilevel::error& e) {
    std::cerr << "ep_mnist: " << e.what() << '\n';
    return 1;
  }
}
