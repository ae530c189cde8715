// The run loop (train/run_loop.hpp): schedule, evaluation, best epoch, checkpoint cadence,
// callbacks, and resumption.
#include <catch2/catch.hpp>

#include <filesystem>
#include <vector>

#include "bilevel/activations/relu.hpp"
#include "bilevel/io/checkpoint.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/optimizers/adam.hpp"
#include "bilevel/train/run_loop.hpp"
#include "helpers.hpp"

using namespace bilevel;

namespace {

struct blob_sets {
  dataset<double> train, validation, test;
};

blob_sets make_sets() {
  random_source random(21);
  Matrix<double> x, y;
  testing::blobs(random, 260, 1.2, x, y);
  std::vector<int> labels(std::size_t(y.cols()));
  for (Index j = 0; j < y.cols(); ++j) y.col(j).maxCoeff(&labels[std::size_t(j)]);
  const auto all = make_dataset<double>(x, labels, 3);
  return {slice(all, 0, 180), slice(all, 180, 40), slice(all, 220, 40)};
}

struct run_under_test {
  mlp<double, relu> net = make_mlp<double, relu>({4, 8, 3});
  bp<double> method;
  adam<double> optimizer{{.learning_rate = 0.01}, net.parameter_count(), net.weight_count()};
  trainer<mlp<double, relu>, bp<double>, adam<double>> loop{net, method, optimizer, 20, 5};
  run_record record;

  run_under_test() {
    random_source random(4);
    net.initialize(init_scheme::glorot_uniform, random);
  }
};

}  // namespace

TEST_CASE("the run loop evaluates, schedules and saves as its settings say", "[run_loop]") {
  const blob_sets sets = make_sets();
  run_under_test run;
  const auto schedule = lr_schedule<double>::step_decay(0.02, 2, 0.5);
  std::vector<Index> started, saved_after;
  std::vector<double> rates, optimizer_rates;
  std::vector<epoch_result> results;
  Index batches = 0;
  run_callbacks<double> callbacks;
  callbacks.epoch_started = [&](Index epoch, double rate) {
    started.push_back(epoch);
    rates.push_back(rate);
  };
  callbacks.batch_done = [&](Index, Index total, Index) {
    ++batches;
    CHECK(total == 9);  // 180 samples in batches of 20
  };
  callbacks.epoch_finished = [&](const epoch_result& result) {
    results.push_back(result);
    optimizer_rates.push_back(run.optimizer.learning_rate());
  };
  callbacks.save = [&] { saved_after.push_back(run.loop.epoch()); };
  const double initial = classification_error(run.net, sets.test);

  run_epochs(run.loop, {.train = &sets.train, .test = &sets.test, .validation = &sets.validation},
             {.epochs = 5, .evaluate_train = true, .schedule = schedule, .save_every = 2},
             run.record, callbacks);

  CHECK(started == std::vector<Index>{1, 2, 3, 4, 5});
  CHECK(rates == std::vector<double>{0.02, 0.02, 0.01, 0.01, 0.005});
  CHECK(optimizer_rates == rates);  // the optimizer got each epoch's rate before training
  CHECK(batches == 45);
  CHECK(saved_after == std::vector<Index>{0, 2, 4, 5});  // at once, every 2nd, after the last
  CHECK(run.record.initial_test_error == initial);
  REQUIRE(results.size() == 5);
  // The errors are the sets' errors after the epoch; the last epoch's are the model's now.
  CHECK(results.back().train_error == classification_error(run.net, sets.train));
  CHECK(results.back().validation_error == classification_error(run.net, sets.validation));
  CHECK(results.back().test_error == classification_error(run.net, sets.test));
  // The record holds the first epoch of lowest validation error and that epoch's test error.
  double best = 2, seconds = 0;
  Index best_epoch = 0;
  for (const epoch_result& result : results) {
    CHECK(result.best == (result.validation_error < best));
    if (result.validation_error < best) {
      best = result.validation_error;
      best_epoch = result.epoch;
    }
    seconds += result.training.seconds;
  }
  CHECK(run.record.best_epoch == best_epoch);
  CHECK(run.record.best_validation == best);
  CHECK(run.record.test_at_best == results[std::size_t(best_epoch - 1)].test_error);
  CHECK(run.record.total_seconds == Approx(seconds).epsilon(1e-12));
  CHECK(results.back().test_error < 0.2);  // it learned the blobs
}

TEST_CASE("the run loop without a schedule or sets leaves rates alone and errors NaN",
          "[run_loop]") {
  const blob_sets sets = make_sets();
  run_under_test run;
  std::vector<epoch_result> results;
  run_callbacks<double> callbacks;
  callbacks.epoch_finished = [&](const epoch_result& result) { results.push_back(result); };
  run_epochs(run.loop, {.train = &sets.train}, {.epochs = 2, .evaluate_train = false}, run.record,
             callbacks);
  REQUIRE(results.size() == 2);
  CHECK(run.optimizer.learning_rate() == 0.01);
  CHECK(std::isnan(results[0].learning_rate));
  CHECK(std::isnan(results[1].train_error));
  CHECK(std::isnan(results[1].validation_error));
  CHECK(std::isnan(results[1].test_error));
  CHECK(run.record.best_epoch == 0);
  CHECK(run.record.initial_test_error == 2);  // no test set: not measured
  CHECK_THROWS_WITH(run_epochs(run.loop, {}, {}, run.record),
                    Catch::Contains("run_epochs") && Catch::Contains("the training set"));
}

TEST_CASE("a run resumed from its checkpoint ends as the run that went through",
          "[run_loop][checkpoint]") {
  const blob_sets sets = make_sets();
  const run_data<double> data{.train = &sets.train, .test = &sets.test,
                              .validation = &sets.validation};
  run_settings settings;
  settings.epochs = 4;
  settings.schedule = lr_schedule<double>::cosine(0.02, 4);

  run_under_test through;
  run_epochs(through.loop, data, settings, through.record);

  const auto path = std::filesystem::temp_directory_path() / "bilevel_run_loop_test.ckpt";
  run_under_test first;
  run_callbacks<double> saving;
  saving.save = [&] {
    save_checkpoint(path.string(), first.net, first.optimizer, first.method,
                    first.loop.progress(), first.record);
  };
  run_settings shorter = settings;
  shorter.epochs = 2;
  run_epochs(first.loop, data, shorter, first.record, saving);

  run_under_test resumed;
  resumed.net.parameters().setZero();
  load_checkpoint(path.string(), resumed.net, resumed.optimizer, resumed.method,
                  resumed.loop.progress(), resumed.record);
  std::filesystem::remove(path);
  CHECK(resumed.loop.epoch() == 2);
  run_epochs(resumed.loop, data, settings, resumed.record);

  CHECK(resumed.net.parameters() == through.net.parameters());
  CHECK(resumed.record.best_epoch == through.record.best_epoch);
  CHECK(resumed.record.best_validation == through.record.best_validation);
  CHECK(resumed.record.test_at_best == through.record.test_at_best);
  CHECK(resumed.record.initial_test_error == through.record.initial_test_error);
}
