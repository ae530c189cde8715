// The trainer under hostile and careless use: it never loses data, never crashes or hangs, never
// reports success for a broken run, and says what is wrong in one line naming the flag or file.
// Exit status 2 for bad flags, 1 for bad files or a failed run (examples/mnist_mlp/main.cpp).

#include <catch2/catch.hpp>
#include <sys/stat.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#ifdef BILEVEL_MNIST_MLP_PATH
#include "trainer_runs.hpp"

using namespace bilevel::testing;
using Catch::Contains;

namespace {

std::vector<char> contents(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// The run failed with `status`, printed no results, and said why in one line holding `part`.
void require_refusal(const run_result& run, int status, const std::string& part) {
  INFO(run.error);
  CHECK(run.status == status);
  CHECK(run.lines.empty());
  CHECK(run.error.rfind("mnist_mlp: ", 0) == 0);
  CHECK(run.error.find('\n') == run.error.size() - 1);
  CHECK_THAT(run.error, Contains(part));
}

}  // namespace

TEST_CASE("an output on the same file as an input or as the other output is refused before "
          "anything is written", "[trainer][reliability]") {
  data_directory data("same-file");
  const std::string base = "--data " + data.path.string() + small_run + " --epochs 1";
  const fs::path labels = data.path / "train-labels-idx1-ubyte";
  const std::vector<char> before = contents(labels);
  const fs::path both = data.path / "out";
  require_refusal(run_trainer(base + " --save " + both.string() + " --csv " + both.string()), 2,
                  "--save and --csv name the same file");
  CHECK_FALSE(fs::exists(both));
  require_refusal(run_trainer(base + " --csv " + labels.string()), 2,
                  "writing it would destroy an input");
  // Another spelling of the same file, and a hard link to it, are the same file.
  const std::string dotted = (data.path / "." / "train-labels-idx1-ubyte").string();
  require_refusal(run_trainer(base + " --save " + dotted), 2, "is the --data file");
  fs::create_hard_link(labels, data.path / "labels-link");
  require_refusal(run_trainer(base + " --csv " + (data.path / "labels-link").string()), 2,
                  "is the --data file");
  CHECK(contents(labels) == before);
  // A checkpoint to resume from may be overwritten by the resumed run, not by its CSV.
  const fs::path checkpoint = data.path / "run.ckpt";
  REQUIRE(run_trainer(base + " --save " + checkpoint.string()).status == 0);
  require_refusal(run_trainer(base + " --epochs 2 --resume " + checkpoint.string() + " --csv " +
                              checkpoint.string()),
                  2, "is the --resume file");
  CHECK(run_trainer(base + " --epochs 2 --resume " + checkpoint.string() + " --save " +
                    checkpoint.string())
            .status == 0);
}

TEST_CASE("outputs that cannot be written fail before training, results that cannot be written "
          "fail the run", "[trainer][reliability]") {
  data_directory data("unwritable");
  const std::string base = "--data " + data.path.string() + small_run + " --epochs 1";
  require_refusal(run_trainer(base + " --csv " + (data.path / "none" / "m.csv").string()), 1,
                  "No such file or directory");
  require_refusal(run_trainer(base + " --csv " + data.path.string()), 1, "is a directory");
  for (const std::string& redirect : {std::string(" > /dev/full"), std::string(" >&-")}) {
    INFO(redirect);
    const raw_result run = run_raw(base + redirect);
    CHECK(run.status == 1);
    CHECK_THAT(run.error, Contains("cannot write the results to stdout"));
  }
  // A name as long as the file system allows: its temporary fits too.
  const fs::path longest = data.path / std::string(250, 'm');
  CHECK(run_trainer(base + " --save " + longest.string() + " --csv " + longest.string() + "-c")
            .status == 0);
  CHECK(fs::exists(longest));
}

TEST_CASE("sizes that overflow or cannot be allocated, and more threads than cores, are handled",
          "[trainer][reliability]") {
  data_directory data("sizes");
  const std::string base = "--data " + data.path.string() + small_run + " --epochs 1";
  // Counted before anything is allocated (in double, so the count itself cannot overflow), a
  // network past the machine's memory is refused by name; before, sizes that could be
  // allocated but not held (784,3000000,10 with Adam: 38 GB) were killed by the kernel mid-run.
  require_refusal(run_trainer(base + " --layers 16,4611686018427387904,10"), 2,
                  "--layers 16,4611686018427387904,10: the network's 1.25e+20 parameters need");
  require_refusal(run_trainer(base + " --layers 16,100000000000,10 --optimizer sgd"), 2,
                  "the network's 2.7e+12 parameters need 32400.0 GB for themselves, their "
                  "gradient and sgd's state; this machine has");
  require_refusal(run_trainer(base + " --validation 9223372036854775807"), 2,
                  "got 5000 + 9223372036854775807");
  const run_result many = run_trainer(base + " --threads 1000");
  CHECK(many.status == 0);
  CHECK_THAT(many.error, Contains("--threads 1000 lowered to the"));
  CHECK(many.lines.back()["threads"].get<int>() < 1000);
}

TEST_CASE("data files that are not regular files, forged headers and bad labels are refused "
          "quickly, naming the file", "[trainer][reliability]") {
  data_directory data("hostile-data");
  const std::string base = " --data " + data.path.string() + small_run + " --epochs 1";
  const fs::path labels = data.path / "t10k-labels-idx1-ubyte";
  const fs::path kept = data.path / "kept";
  fs::rename(labels, kept);
  REQUIRE(::mkfifo(labels.c_str(), 0600) == 0);
  // Under `timeout`: a reader that blocks on the FIFO fails the test instead of hanging it.
  const run_result fifo = run_trainer(base, "timeout 60");
  require_refusal(fifo, 1, "not a regular file");
  fs::remove(labels);
  fs::create_symlink(data.path / "loop", labels);
  fs::create_symlink(labels, data.path / "loop");
  require_refusal(run_trainer(base), 1, "Too many levels of symbolic links");
  fs::remove(labels);
  fs::rename(kept, labels);
  require_refusal(run_trainer("--data " + labels.string()), 1, "not a directory");

  // Test images whose gzip header claims 16384 x 256 x 256 pixels (a gigabyte once inflated).
  const fs::path images = data.path / "t10k-images-idx3-ubyte";
  fs::rename(images, kept);
  const std::vector<std::uint8_t> header = {0, 0, 8, 3, 0, 0, 64, 0, 0, 0, 1, 0, 0, 0, 1, 0};
  gzFile forged = gzopen((images.string() + ".gz").c_str(), "wb");
  REQUIRE(forged != nullptr);
  gzwrite(forged, header.data(), unsigned(header.size()));
  const std::vector<std::uint8_t> zeros(std::size_t{1} << 20);
  for (int megabyte = 0; megabyte < 64; ++megabyte)
    gzwrite(forged, zeros.data(), unsigned(zeros.size()));
  gzclose(forged);
  require_refusal(run_trainer(base), 1, "holds 16384 images");
  fs::remove(images.string() + ".gz");
  fs::rename(kept, images);

  // A label out of range: a data error (status 1) naming the file, not a flag error.
  std::fstream label_file(labels, std::ios::in | std::ios::out | std::ios::binary);
  label_file.seekp(8 + 77);
  label_file.put(char(12));
  label_file.close();
  require_refusal(run_trainer(base), 1, "t10k-labels-idx1-ubyte: label 77 is 12");
}

TEST_CASE("a blow-up in the very last step fails the run and leaves no checkpoint of it",
          "[trainer][reliability]") {
  data_directory data("last-step");
  const std::string base = "--data " + data.path.string() +
                           " --layers 16,64,10 --train-samples 50 --batch 50 --validation 10"
                           " --method bp --optimizer sgd --lr 3e38";
  const fs::path initial = data.path / "initial.ckpt", last = data.path / "last.ckpt";
  REQUIRE(run_trainer(base + " --epochs 0 --save " + initial.string()).status == 0);
  const run_result blown = run_trainer(base + " --epochs 1 --save " + last.string());
  CHECK(blown.status == 1);
  CHECK_THAT(blown.error, Contains("not finite"));
  CHECK(blown.lines.empty());
  CHECK(contents(last) == contents(initial));  // the checkpoint written before training only
}

TEST_CASE("a resumed run refuses other training flags or data, naming each flag that differs",
          "[trainer][reliability][checkpoint]") {
  data_directory data("resume-flags");
  const std::string base = "--data " + data.path.string() + small_run + " --method bp";
  const fs::path checkpoint = data.path / "run.ckpt";
  REQUIRE(run_trainer(base + " --epochs 1 --save " + checkpoint.string()).status == 0);
  const std::string resume = " --epochs 2 --resume " + checkpoint.string();
  require_refusal(run_trainer(base + resume + " --lr 0.01 --seed 4"), 1,
                  "--lr 0.01 (the checkpoint's run: 0.001), --seed 4 (the checkpoint's run: 1)");
  require_refusal(run_trainer(base + resume + " --batch 20"), 1, "--batch 20");
  require_refusal(run_trainer(base + resume + " --schedule cosine"), 1, "--schedule cosine");
  // The same flags with other data.
  fs::copy_file(data.path / "train-labels-idx1-ubyte", data.path / "labels",
                fs::copy_options::overwrite_existing);
  std::fstream label_file(data.path / "train-labels-idx1-ubyte",
                          std::ios::in | std::ios::out | std::ios::binary);
  label_file.seekp(8);
  label_file.put(char(label_file.get() == 3 ? 4 : 3));
  label_file.close();
  require_refusal(run_trainer(base + resume), 1, "the training labels (--data)");
  fs::copy_file(data.path / "labels", data.path / "train-labels-idx1-ubyte",
                fs::copy_options::overwrite_existing);
  CHECK(run_trainer(base + resume + " --threads 2 --quiet").status == 0);
}

TEST_CASE("flags out of range, not numbers or not finite are refused in one short line naming "
          "the flag", "[trainer][reliability]") {
  data_directory data("flag-values");
  const std::string base = "--data " + data.path.string() + small_run + " --epochs 1";
  for (const auto& [flags, part] : std::vector<std::pair<std::string, std::string>>{
           {"--seed -1", "--seed: expected a whole number from 0 to 18446744073709551615"},
           {"--seed 18446744073709551616", "--seed: expected a whole number"},
           {"--inner-step nan", "--inner-step: expected a finite number >= 0, got 'nan'"},
           {"--tolerance nan", "--tolerance: expected a finite number >= 0"},
           {"--lr 0", "--lr: expected a finite number > 0, got '0'"},
           {"--lr abc", "--lr: expected a finite number > 0, got 'abc'"},
           {"--lr inf", "--lr: expected a finite number > 0, got 'inf'"},
           {"--epochs 1 --epochs nan", "--epochs: expected a whole number >= 0, got 'nan'"},
           {"--batch 2.5", "--batch: expected a whole number >= 1, got '2.5'"},
           {"--momentum 1", "--momentum: expected a finite number >= 0 and < 1"}}) {
    INFO(flags);
    const run_result run = run_trainer(base + " " + flags);
    require_refusal(run, 2, part);
    CHECK(run.error.size() < 200);
  }
}

TEST_CASE("flags the chosen method, optimizer, activation or schedule ignores are named",
          "[trainer][reliability]") {
  data_directory data("ignored-flags");
  const std::string base = "--data " + data.path.string() + small_run + " --epochs 1";
  const run_result run =
      run_trainer(base + " --method bp --gamma 2 --momentum 0.5 --beta 0.1 --extrapolation 0.5");
  CHECK(run.status == 0);
  CHECK_THAT(run.error, Contains("warning: --gamma has no effect with bp (it applies to chl)") &&
                            Contains("warning: --momentum has no effect with adam") &&
                            Contains("warning: --beta has no effect with bp") &&
                            Contains("warning: --extrapolation has no effect with bp (it "
                                     "applies to chl, lpom, fln)"));
  const run_result used =
      run_trainer(base + " --method chl --gamma 0.5 --beta 0.1 --extrapolation 0.5");
  CHECK(used.status == 0);
  CHECK_THAT(used.error, !Contains("warning: --"));
  const raw_result version = run_raw("--version");
  CHECK(version.status == 0);
  CHECK_THAT(version.output, Contains("bilevel " + std::string(BILEVEL_PROJECT_VERSION)));
}

#endif
