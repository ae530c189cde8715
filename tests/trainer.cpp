// The mnist_mlp trainer end to end on a synthetic 10-class problem written to idx files here:
// it learns what a linear model cannot, and bad flags or data give one-line errors with exit
// status 1 or 2. Also the trainer loop's own checks.

#include <catch2/catch.hpp>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numbers>
#include <span>
#include <sstream>
#include <string>
#include <unistd.h>
#include <utility>
#include <vector>

#include "bilevel/activations/relu.hpp"
#include "bilevel/io/idx.hpp"
#include "bilevel/io/npy.hpp"
#include "bilevel/methods/bp.hpp"
#include "bilevel/optimizers/sgd.hpp"
#include "bilevel/train/trainer.hpp"
#include "helpers.hpp"

namespace fs = std::filesystem;
using namespace bilevel;
using json = nlohmann::json;

#ifdef BILEVEL_MNIST_MLP_PATH
#include "trainer_runs.hpp"

using namespace bilevel::testing;

TEST_CASE("the trainer learns a problem no linear model solves, from chance to > 90%",
          "[trainer]") {
  data_directory data("learn");
  const run_result run = run_trainer("--data " + data.path.string() + small_run +
                                     " --method fenbp --beta 0.01 --epochs 30 --lr 0.003");
  INFO(run.error);
  REQUIRE(run.status == 0);
  REQUIRE(run.lines.size() == 31);  // one object per epoch and a summary
  const json& summary = run.lines.back();
  CHECK(summary["summary"] == true);
  CHECK(summary["initial_test_error"].get<double>() > 0.7);  // chance is 0.9
  CHECK(summary["final_test_error"].get<double>() < 0.1);
  for (const char* key : {"epoch", "method", "beta", "train_error", "validation_error",
                          "test_error", "loss", "seconds", "samples_per_s"})
    CHECK(run.lines.front().contains(key));
  CHECK(run.lines.front()["method"] == "fenbp");
  CHECK(run.lines.front()["beta"].get<double>() == Approx(0.01));
}

TEST_CASE("every method trains end to end in the trainer, in gradient and native mode",
          "[trainer]") {
  data_directory data("methods");
  const std::string base = "--data " + data.path.string() +
                           " --layers 16,32,10 --train-samples 2000 --validation 500 --epochs 4";
  for (const std::string& method :
       {std::string("bp"), std::string("fenbp"), std::string("chl"), std::string("ep"),
        std::string("pcn"), std::string("zil"), std::string("mac"), std::string("lpom"),
        std::string("fln"), std::string("altmin")}) {
    for (const std::string& mode : {std::string("gradient"), std::string("native")}) {
      const bool native_step = method == "mac" || method == "lpom" || method == "fln" ||
                               method == "altmin";
      if (mode == "native" && !native_step) continue;
      INFO(method << " " << mode);
      const run_result run =
          run_trainer(base + " --method " + method + " --step-mode " + mode + " --batch 20");
      INFO(run.error);
      REQUIRE(run.status == 0);
      REQUIRE(run.lines.size() == 5);
      const json& summary = run.lines.back();
      CHECK(summary["method"] == method);
      CHECK(summary["step_mode"] == mode);
      CHECK(summary["inference"] == (method == "pcn"   ? json("anderson")
                                     : method == "zil" ? json("plain")
                                                       : json()));
      // Iterative methods report how their inner solver ended; BP and Fenchel BP have none.
      const bool iterative = method != "bp" && method != "fenbp";
      CHECK(run.lines.front()["inner_residual"].is_number() == iterative);
      CHECK(run.lines.front()["inner_energy"].is_number() == iterative);
      CHECK(summary["final_test_error"].get<double>() <
            summary["initial_test_error"].get<double>() - 0.2);
    }
  }
  // PCN's other inference dynamics (docs/methods.md §5.4) train as its default, mixing, does;
  // the summary names the dynamics.
  for (const std::string& inference : {std::string("momentum"), std::string("plain")}) {
    INFO(inference);
    const run_result run =
        run_trainer(base + " --method pcn --batch 20 --inference " + inference);
    INFO(run.error);
    REQUIRE(run.status == 0);
    CHECK(run.lines.front()["unconverged_share"] == 0.0);
    CHECK(run.lines.back()["inference"] == inference);
    CHECK(run.lines.back()["final_test_error"].get<double>() <
          run.lines.back()["initial_test_error"].get<double>() - 0.2);
  }
  const run_result unsupported = run_trainer(base + " --method fenbp --step-mode native");
  CHECK(unsupported.status == 2);
  CHECK_THAT(unsupported.error, Catch::Contains("native"));
}

namespace {

/// Trains each (method flags, architecture) pair of `methods` on 4 x 4 images and requires the
/// test error to fall. Two epochs of 1,000 images at a learning rate that leaves the plateau at
/// chance within them: the sanitizer build runs an inner solve 30x slower than Release. The
/// methods are split over test cases so that ctest runs them side by side, each in a data
/// directory of its own.
void require_cnn_training(const std::string& directory,
                          const std::vector<std::pair<std::string, std::string>>& methods) {
  data_directory data(directory);
  const std::string base = "--data " + data.path.string() +
                           " --train-samples 1000 --validation 500 --epochs 2 --batch 20";
  for (const auto& [method, architecture] : methods) {
    INFO(method);
    const run_result run =
        run_trainer(base + " --method " + method + " --architecture " + architecture);
    INFO(run.error);
    REQUIRE(run.status == 0);
    const json& summary = run.lines.back();
    CHECK(summary["layers"] == architecture);
    CHECK(summary["final_test_error"].get<double>() <
          summary["initial_test_error"].get<double>() - 0.2);
  }
}

// 8 filters of 3 x 3 with padding 1, average pooling to 2 x 2, two dense layers.
const std::string small_cnn = "conv8k3p1-pool2-dense32-dense10";

}  // namespace

TEST_CASE("BP, Fenchel BP, CHL, PCN and Z-IL train a CNN given by --architecture",
          "[trainer][conv]") {
  // PCN at its defaults (sigmoid, s = 1) learns this CNN slowly: it gets a larger rate.
  require_cnn_training("cnn-bp", {{"bp --lr 0.005", small_cnn},
                                  {"fenbp --lr 0.005", small_cnn},
                                  {"chl --lr 0.005", small_cnn},
                                  {"pcn --lr 0.03", small_cnn},
                                  {"zil --lr 0.005", small_cnn}});
}

TEST_CASE("MAC, LPOM, FLN, AltMin and EP train a CNN given by --architecture",
          "[trainer][conv]") {
  // EP refuses the identity after a pooling layer (an unbounded hidden layer): no pooling.
  require_cnn_training("cnn-mac", {{"mac --lr 0.005", small_cnn},
                                   {"lpom --lr 0.005", small_cnn},
                                   {"fln --lr 0.005", small_cnn},
                                   {"altmin --lr 0.005", small_cnn},
                                   {"ep", "conv8k3p1-dense32-dense10"}});
}

TEST_CASE("a CNN run resumes exactly, and bad architectures are refused by name",
          "[trainer][conv]") {
  data_directory data("cnn");
  const fs::path half = data.path / "half.ckpt";
  require_exact_resume("--data " + data.path.string() +
                           " --architecture conv4k3p1-pool2-dense10 --train-samples 1500"
                           " --validation 500 --seed 3 --method fenbp",
                       half, "", "");
  // A checkpoint of one architecture does not resume another.
  const run_result other = run_trainer("--data " + data.path.string() +
                                       " --architecture conv4k3-dense10 --train-samples 1500"
                                       " --validation 500 --seed 3 --method fenbp --epochs 4"
                                       " --resume " + half.string());
  CHECK(other.status != 0);
  CHECK_THAT(other.error, Catch::Contains("conv4k3-dense10"));
  // Bad architectures: one line naming the token or the layer, exit status 2.
  const std::string flags = "--data " + data.path.string() + " --epochs 1";
  for (const auto& [bad, named] : {std::pair{" --architecture conv4k5-dense10", "layer 1 (conv4k5)"},
                                   {" --architecture conv4k3-maxpool2-dense10", "\"maxpool2\""},
                                   {" --architecture conv4k3-dense9", "the number of classes"},
                                   {" --model lenet5", "layer 3 (conv16k5)"},
                                   {" --model lenet5 --layers 16,10", "--layers"},
                                   {" --model cnn", "--model"}}) {
    INFO(bad);
    const run_result run = run_trainer(flags + bad);
    CHECK(run.status == 2);
    CHECK_THAT(run.error, Catch::Contains(named));
    CHECK(run.error.find('\n') == run.error.size() - 1);  // one line
  }
}

TEST_CASE("a linear model does not solve the synthetic problem", "[trainer]") {
  data_directory data("linear");
  const run_result run = run_trainer("--data " + data.path.string() +
                                     " --layers 16,10 --train-samples 5000 --validation 1000"
                                     " --method bp --epochs 30 --lr 0.003");
  INFO(run.error);
  REQUIRE(run.status == 0);
  CHECK(run.lines.back()["final_test_error"].get<double>() > 0.25);
}

TEST_CASE("the trainer is deterministic given the seed", "[trainer]") {
  data_directory data("seed");
  const std::string arguments =
      "--data " + data.path.string() + small_run + " --method bp --epochs 2 --seed 5";
  const run_result first = run_trainer(arguments), second = run_trainer(arguments);
  REQUIRE(first.status == 0);
  REQUIRE(second.status == 0);
  CHECK(first.lines[1]["loss"] == second.lines[1]["loss"]);
  CHECK(first.lines[1]["test_error"] == second.lines[1]["test_error"]);
}

TEST_CASE("the trainer flushes denormals unless --keep-denormals, with the same results",
          "[trainer]") {
  data_directory data("denormals");
  const std::string arguments =
      "--data " + data.path.string() + small_run + " --method fenbp --epochs 2 --seed 5";
  const run_result flushed = run_trainer(arguments);
  const run_result kept = run_trainer(arguments + " --keep-denormals");
  REQUIRE(flushed.status == 0);
  REQUIRE(kept.status == 0);
  CHECK(flushed.lines.back()["denormals"] == "flushed");
  CHECK(kept.lines.back()["denormals"] == "kept");
  CHECK(flushed.lines[1]["test_error"] == kept.lines[1]["test_error"]);
}

TEST_CASE("the trainer runs in double with --precision double, or says it was built without it",
          "[trainer]") {
  data_directory data("precision");
  const std::string arguments =
      "--data " + data.path.string() + small_run + " --method fenbp --epochs 2 --seed 5";
  const run_result in_double = run_trainer(arguments + " --precision double");
#ifdef BILEVEL_MNIST_MLP_DOUBLE
  const run_result in_float = run_trainer(arguments);
  INFO(in_double.error);
  REQUIRE(in_double.status == 0);
  REQUIRE(in_float.status == 0);
  CHECK(in_double.lines.back()["precision"] == "double");
  CHECK(in_float.lines.back()["precision"] == "float");
  // The same training up to float's rounding, which two epochs of Adam do not amplify far.
  const double loss = in_double.lines[1]["loss"].get<double>();
  CHECK(in_float.lines[1]["loss"].get<double>() == Approx(loss).epsilon(1e-3));
#else
  CHECK(in_double.status == 2);
  CHECK_THAT(in_double.error, Catch::Contains("--precision double") &&
                                  Catch::Contains("BILEVEL_TRAINER_DOUBLE=OFF"));
#endif
}

TEST_CASE("a flag given twice takes its last value, so wrappers can set defaults",
          "[trainer]") {
  data_directory data("repeat");
  const run_result run =
      run_trainer("--data " + data.path.string() + small_run + " --epochs 3 --epochs 1");
  INFO(run.error);
  REQUIRE(run.status == 0);
  CHECK(run.lines.size() == 2);
  CHECK(run.lines.back()["epochs"] == 1);
}

TEST_CASE("bad flags give a one-line error and exit status 2", "[trainer]") {
  data_directory data("flags");
  const std::string base = "--data " + data.path.string() + small_run + " --epochs 1";
  for (const std::string& flags :
       {std::string(" --method sgd"), std::string(" --beta 0"), std::string(" --beta -1"),
        std::string(" --beta 1,2"), std::string(" --batch 0"), std::string(" --activation elu"),
        std::string(" --layers 16,64,9"), std::string(" --architecture dense10"),
        std::string(" --train-samples 6000"), std::string(" --method pcn --inference fast"),
        std::string(" --no-such-flag")}) {
    INFO(flags);
    const run_result run = run_trainer(base + flags);
    CHECK(run.status == 2);
    CHECK(run.lines.empty());
    CHECK(run.error.rfind("mnist_mlp: ", 0) == 0);
    CHECK(run.error.find('\n') == run.error.size() - 1);  // one line
  }
  // Values that used to pass silently: an empty path, list or architecture read as the flag not
  // given, a trailing comma was dropped, and a spacing <= 0 was refused by the method without
  // naming the flag.
  for (const auto& [flags, names] : std::vector<std::pair<std::string, std::string>>{
           {" --architecture ''", "--architecture: expected a non-empty value"},
           {" --save ''", "--save: expected a non-empty value"},
           {" --resume ''", "--resume: expected a non-empty value"},
           {" --csv ''", "--csv: expected a non-empty value"},
           {" --export ''", "--export: expected a non-empty value"},
           {" --layers 16,64,10,", "--layers must be a comma-separated list of finite numbers"},
           {" --method pcn --beta 0", "--beta must be a comma-separated list of finite numbers"},
           {" --method lpom --lambda -1", "--lambda must be a comma-separated list"},
           // A batch larger than the training set ran as one batch of the set, reported as
           // the batch asked for.
           {" --batch 5001", "setup: --batch must be <= --train-samples (5000), got 5001"}}) {
    INFO(flags);
    const run_result run = run_trainer(base + flags);
    CHECK(run.status == 2);
    CHECK(run.lines.empty());
    CHECK_THAT(run.error, Catch::Matchers::Contains(names));
  }
}

TEST_CASE("missing or corrupt data gives a one-line error and exit status 1", "[trainer]") {
  data_directory data("corrupt");
  // Images of another size than --layers asks for: refused from the header, naming the file.
  const run_result other_size = run_trainer("--data " + data.path.string() + small_run +
                                            " --layers 17,64,10");
  CHECK(other_size.status == 1);
  CHECK_THAT(other_size.error, Catch::Contains("train-images-idx3-ubyte: images are 4x4 (16 "
                                               "pixels), expected 17 pixels"));
  const run_result missing = run_trainer("--data " + (data.path / "nowhere").string());
  CHECK(missing.status == 1);
  CHECK_THAT(missing.error, Catch::Contains("nowhere"));
  // Truncate the test images.
  fs::resize_file(data.path / "t10k-images-idx3-ubyte", 1000);
  const run_result truncated = run_trainer("--data " + data.path.string() + small_run);
  CHECK(truncated.status == 1);
  CHECK_THAT(truncated.error, Catch::Contains("t10k-images-idx3-ubyte"));
  CHECK(truncated.error.find('\n') == truncated.error.size() - 1);
}

TEST_CASE("the trainer with --csv writes the epochs' metrics and --quiet leaves stderr empty", "[trainer]") {
  data_directory data("csv");
  const fs::path table = data.path / "metrics.csv";
  const run_result run = run_trainer("--data " + data.path.string() + small_run +
                                     " --method bp --epochs 2 --quiet --csv " + table.string());
  REQUIRE(run.status == 0);
  CHECK(run.error.empty());
  std::FILE* file = std::fopen(table.c_str(), "r");
  REQUIRE(file != nullptr);
  std::vector<std::string> rows;
  std::array<char, 4096> buffer{};
  while (std::fgets(buffer.data(), int(buffer.size()), file)) rows.emplace_back(buffer.data());
  std::fclose(file);
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].rfind("epoch,method,beta,lr,train_error,validation_error,test_error,loss,", 0) ==
        0);
  for (int epoch = 1; epoch <= 2; ++epoch) {
    std::vector<std::string> fields;
    std::stringstream row(rows[std::size_t(epoch)]);
    for (std::string field; std::getline(row, field, ',');) fields.push_back(field);
    REQUIRE(fields.size() >= 7);
    CHECK(fields[0] == std::to_string(epoch));
    CHECK(fields[1] == "bp");
    CHECK(fields[2].empty());  // bp has no spacing
    CHECK(std::stod(fields[6]) ==
          Approx(run.lines[std::size_t(epoch - 1)]["test_error"].get<double>()));
  }
}

TEST_CASE("the trainer's --help documents every flag, with its default where it has one", "[trainer]") {
  const raw_result help = run_raw("--help");
  CHECK(help.status == 0);
  for (const std::string flag :
       {"--data TEXT=data/mnist", "--method TEXT:{", "--epochs INT:NONNEGATIVE=10",
        "--seed UINT:0..2^64-1=1", "--save-every INT:POSITIVE=1", "--precision TEXT:{float,double}=float",
        "--beta", "method default", "--save", "--resume", "--csv", "--quiet", "--threads"}) {
    INFO(flag);
    CHECK(help.output.find(flag) != std::string::npos);
  }
}


TEST_CASE("the trainer resumed with --resume continues exactly where --save left it", "[trainer][checkpoint]") {
  data_directory data("resume");
  const fs::path straight = data.path / "straight.ckpt", half = data.path / "half.ckpt";
  for (const std::string method : {"fenbp", "ep --one-sided --layers 16,32,10", "altmin"}) {
    INFO(method);
    const std::string base = "--data " + data.path.string() +
                             " --layers 16,64,64,10 --train-samples 1500 --validation 500"
                             " --seed 3 --method " + method;
    const auto [full, first, rest] =
        require_exact_resume(base, half, "", " --save " + straight.string());
    CHECK(rest.lines.back()["best_epoch"] == full.lines.back()["best_epoch"]);
    CHECK(rest.lines.back()["initial_test_error"] == full.lines.back()["initial_test_error"]);
    CHECK_THAT(rest.error, Catch::Contains("resumed from") && Catch::Contains("after epoch 2"));
  }
}

TEST_CASE("bad checkpoints and paths give a one-line error and exit status 1",
          "[trainer][checkpoint]") {
  data_directory data("bad-checkpoint");
  const std::string base = "--data " + data.path.string() + small_run + " --epochs 1";
  const fs::path file = data.path / "run.ckpt";
  REQUIRE(run_trainer(base + " --method bp --save " + file.string()).status == 0);
  const auto one_line_error = [](const run_result& run, const std::string& part) {
    INFO(run.error);
    CHECK(run.status == 1);
    CHECK(run.error.rfind("mnist_mlp: ", 0) == 0);
    CHECK(run.error.find('\n') == run.error.size() - 1);
    CHECK_THAT(run.error, Catch::Contains(part));
  };
  one_line_error(run_trainer(base + " --save " + (data.path / "no" / "dir.ckpt").string()),
                 "dir.ckpt");
  one_line_error(run_trainer(base + " --resume " + (data.path / "none.ckpt").string()),
                 "none.ckpt");
  one_line_error(run_trainer(base + " --method fenbp --resume " + file.string()),
                 "method must be 'fenbp', got 'bp'");
  one_line_error(run_trainer(base + " --method bp --layers 16,32,10 --resume " + file.string()),
                 "number of layer sizes");
  fs::resize_file(file, fs::file_size(file) / 2);
  one_line_error(run_trainer(base + " --method bp --resume " + file.string()), "run.ckpt");
}

TEST_CASE("an idx file whose count exceeds its payload gives a one-line error",
          "[trainer]") {
  data_directory data("count");
  // Raise the label file's count from 6000 to 6001 without adding a label.
  const fs::path labels = data.path / "train-labels-idx1-ubyte";
  std::FILE* file = std::fopen(labels.c_str(), "r+b");
  REQUIRE(file != nullptr);
  const unsigned char count[4] = {0, 0, 0x17, 0x71};
  REQUIRE(std::fseek(file, 4, SEEK_SET) == 0);
  REQUIRE(std::fwrite(count, 1, 4, file) == 4);
  std::fclose(file);
  const run_result run = run_trainer("--data " + data.path.string() + small_run);
  CHECK(run.status == 1);
  CHECK_THAT(run.error, Catch::Contains("train-labels-idx1-ubyte") &&
                            Catch::Contains("expected 6001 payload bytes"));
  CHECK(run.error.find('\n') == run.error.size() - 1);
}

TEST_CASE("the trainer's --export writes a model that reproduces the reported test error",
          "[trainer][npy]") {
  data_directory data("export");
  const fs::path model = data.path / "model";
  // Refused before training: the directory must exist.
  const run_result missing = run_trainer("--data " + data.path.string() + small_run +
                                         " --method bp --epochs 1 --export " + model.string());
  CHECK(missing.status == 1);
  CHECK(missing.lines.empty());
  CHECK_THAT(missing.error, Catch::Contains("--export " + model.string()));

  fs::create_directory(model);
  const run_result run = run_trainer("--data " + data.path.string() + small_run +
                                     " --method fenbp --epochs 2 --quiet --export " +
                                     model.string());
  REQUIRE(run.status == 0);
  const std::vector<Index> layers = {16, 64, 64, 10};  // small_run's --layers
  auto net = make_mlp<float, relu>(layers);
  import_npy(model, net);
  const auto files = load_mnist<float>(data.path);
  const auto test = make_dataset<float>(files.test.images, files.test.labels, 10);
  CHECK(classification_error(net, test) ==
        Approx(run.lines.back()["final_test_error"].get<double>()).epsilon(1e-5));
  CHECK(json::parse(std::ifstream(model / "manifest.json"))["layer_sizes"] == json(layers));

  // A CNN: convolution weights in PyTorch's layout, no files for the pooling layer.
  const fs::path cnn_model = data.path / "cnn";
  fs::create_directory(cnn_model);
  const std::string architecture = "conv4k3p1-pool2-dense10";
  const run_result cnn_run = run_trainer("--data " + data.path.string() +
                                         " --train-samples 5000 --validation 1000 --method bp"
                                         " --epochs 1 --quiet --architecture " +
                                         architecture + " --export " + cnn_model.string());
  INFO(cnn_run.error);
  REQUIRE(cnn_run.status == 0);
  mlp<float, relu> cnn({1, 4, 4}, parse_architecture(architecture),
                       {relu{}, identity{}, identity{}});
  import_npy(cnn_model, cnn);
  CHECK(classification_error(cnn, test) ==
        Approx(cnn_run.lines.back()["final_test_error"].get<double>()).epsilon(1e-5));
  const json manifest = json::parse(std::ifstream(cnn_model / "manifest.json"));
  CHECK(manifest["architecture"] == architecture);
  CHECK(manifest["layers"][0]["weights"]["shape"] == json({4, 1, 3, 3}));
  CHECK_FALSE(fs::exists(cnn_model / "W2.npy"));
}

#endif

TEST_CASE("the trainer loop stops with a numeric_error naming epoch and batch on a NaN",
          "[trainer]") {
  random_source random(3);
  auto net = make_mlp<double, relu>({4, 5, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  Matrix<double> x = testing::random_matrix<double>(random, 4, 20);
  x(2, 13) = std::numeric_limits<double>::quiet_NaN();
  std::vector<int> labels(20, 1);
  const auto set = make_dataset<double>(x, labels, 3);
  bp<double> method;
  sgd<double> optimizer({.learning_rate = 0.1}, net.parameter_count(), net.weight_count());
  trainer loop(net, method, optimizer, 5, 1);
  CHECK_THROWS_AS(loop.run_epoch(set), numeric_error);
  CHECK_THROWS_WITH(loop.run_epoch(set), Catch::Contains("epoch 2") && Catch::Contains("batch"));
}

TEST_CASE("the trainer loop refuses an empty set and catches a blow-up in the very last step",
          "[trainer][reliability]") {
  random_source random(5);
  auto net = make_mlp<double, relu>({4, 5, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = 100 * testing::random_matrix<double>(random, 4, 10);
  const auto set = make_dataset<double>(x, std::vector<int>(10, 2), 3);
  bp<double> method;
  sgd<double> optimizer({.learning_rate = std::numeric_limits<double>::max()},
                        net.parameter_count(), net.weight_count());
  trainer loop(net, method, optimizer, 10, 1);
  const auto empty = make_dataset<double>(Matrix<double>(4, 0), std::vector<int>{}, 3);
  CHECK_THROWS_AS(loop.run_epoch(empty), config_error);
  // One batch, so no later loss could notice: the step itself overflows the parameters.
  CHECK_THROWS_WITH(loop.run_epoch(set), Catch::Contains("after the optimizer step") &&
                                             Catch::Contains("epoch 1, batch 1"));
  // Parameters that are finite but so large that the outputs are not: evaluation refuses them
  // instead of counting NaN outputs as predictions of class 0.
  auto huge = make_mlp<double, relu>({4, 5, 3});
  huge.initialize(init_scheme::glorot_uniform, random);
  huge.parameters() *= 1e300;
  CHECK(huge.parameters().allFinite());
  CHECK_THROWS_AS(classification_error(huge, set), numeric_error);
  CHECK_THROWS_WITH(classification_error(huge, set), Catch::Contains("output is not finite"));
}

TEST_CASE("the trainer loop uses every sample once per epoch, the last batch partial",
          "[trainer]") {
  random_source random(4);
  auto net = make_mlp<double, relu>({4, 5, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = testing::random_matrix<double>(random, 4, 23);
  const auto set = make_dataset<double>(x, std::vector<int>(23, 2), 3);
  bp<double> method;
  sgd<double> optimizer({.learning_rate = 0.01}, net.parameter_count(), net.weight_count());
  trainer loop(net, method, optimizer, 5, 1);
  const epoch_report report = loop.run_epoch(set);
  CHECK(report.batches == 5);
  CHECK(report.seconds > 0);
  CHECK_THROWS_AS(make_dataset<double>(x, std::vector<int>(23, 3), 3), config_error);
  CHECK_THROWS_AS(trainer(net, method, optimizer, 0, 1), config_error);
}

namespace {

/// A gradient method that takes sample indices and records them, with the columns it got.
struct recording_method {
  std::vector<Index> samples;
  std::vector<Matrix<double>> batches;

  std::string name() const { return "recording"; }
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<double>& x, const MatrixCRef<double>&,
                       Vector<double>& gradient) {
    batches.emplace_back(x);
    gradient.setZero(net.parameter_count());
    return {};
  }
  template <class Program>
  step_report gradient(const Program& net, const MatrixCRef<double>& x,
                       const MatrixCRef<double>& y, std::span<const Index> indices,
                       Vector<double>& gradient) {
    samples.insert(samples.end(), indices.begin(), indices.end());
    return this->gradient(net, x, y, gradient);
  }
};

}  // namespace

TEST_CASE("the trainer passes each batch's sample indices, shuffled or in the set's order",
          "[trainer]") {
  random_source random(5);
  auto net = make_mlp<double, relu>({4, 5, 3});
  const Matrix<double> x = testing::random_matrix<double>(random, 4, 23);
  const auto set = make_dataset<double>(x, std::vector<int>(23, 1), 3);
  sgd<double> optimizer({.learning_rate = 0.01}, net.parameter_count(), net.weight_count());
  recording_method method;
  static_assert(SampleIndexedMethod<recording_method, decltype(net)>);
  trainer loop(net, method, optimizer, 5, 1);
  std::vector<Index> in_order(23);
  for (Index i = 0; i < 23; ++i) in_order[std::size_t(i)] = i;
  for (const sample_order order : {sample_order::shuffled, sample_order::fixed}) {
    loop.set_sample_order(order);
    CHECK(loop.order() == order);
    for (int epoch = 0; epoch < 2; ++epoch) {
      method.samples.clear();
      method.batches.clear();
      loop.run_epoch(set);
      REQUIRE(method.samples.size() == 23);
      REQUIRE(method.batches.size() == 5);
      // Column j of every batch is the example its index names.
      std::size_t next = 0;
      for (const Matrix<double>& batch : method.batches)
        for (Index j = 0; j < batch.cols(); ++j) CHECK(batch.col(j) == x.col(method.samples[next++]));
      std::vector<Index> sorted = method.samples;
      std::sort(sorted.begin(), sorted.end());
      CHECK(sorted == in_order);  // every example once
      CHECK((method.samples == in_order) == (order == sample_order::fixed));
    }
  }
}
