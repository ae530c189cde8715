// Tests for the idx reader/writer and the MNIST loaders (include/bilevel/io/idx.hpp).

#include <sys/stat.h>
#include <zlib.h>

#include <bilevel/io/idx.hpp>
#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "helpers.hpp"

namespace fs = std::filesystem;
using bilevel::data_error;
using bilevel::idx_array;
using bilevel::read_idx;
using bilevel::shape_error;
using bilevel::write_idx;
using Catch::Contains;

namespace {

/// A scratch directory for one test case.
struct idx_temp_dir : bilevel::testing::scratch_directory {
  idx_temp_dir() : scratch_directory("bilevel-idx-test-") {}
};

std::vector<std::uint8_t> iota_bytes(std::size_t count, std::uint8_t start = 0) {
  std::vector<std::uint8_t> bytes(count);
  for (std::size_t i = 0; i < count; ++i) bytes[i] = static_cast<std::uint8_t>(start + i);
  return bytes;
}

std::vector<std::uint8_t> file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_raw(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

void write_gzip(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  gzFile file = gzopen(path.string().c_str(), "wb");
  REQUIRE(file != nullptr);
  const int written = gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size()));
  const int closed = gzclose(file);
  REQUIRE(written == static_cast<int>(bytes.size()));
  REQUIRE(closed == Z_OK);
}

/// Writes `dims`/`data` as idx, then returns the raw bytes (header + payload) of that file.
std::vector<std::uint8_t> idx_bytes(const idx_temp_dir& dir, const std::vector<std::int64_t>& dims,
                                    const std::vector<std::uint8_t>& data) {
  const fs::path path = dir / "scratch.idx";
  write_idx(path, dims, data);
  auto bytes = file_bytes(path);
  fs::remove(path);
  return bytes;
}

}  // namespace

TEST_CASE("write_idx and read_idx round-trip plain files", "[idx]") {
  idx_temp_dir dir;
  const std::vector<std::int64_t> dims{3, 2, 4};
  const auto data = iota_bytes(24, 230);  // wraps past 255: every byte value class
  write_idx(dir / "images", dims, data);

  // The header is the documented big-endian layout.
  const auto raw = file_bytes(dir / "images");
  REQUIRE(raw.size() == 4 + 3 * 4 + 24);
  CHECK(raw[0] == 0);
  CHECK(raw[1] == 0);
  CHECK(raw[2] == 0x08);
  CHECK(raw[3] == 3);
  CHECK(raw[7] == 3);
  CHECK(raw[11] == 2);
  CHECK(raw[15] == 4);

  const idx_array read = read_idx(dir / "images");
  CHECK(read.dims == dims);
  CHECK(read.data == data);

  // Large dimensions are encoded over all four bytes.
  const std::vector<std::int64_t> wide{70000};
  const auto wide_data = iota_bytes(70000);
  write_idx(dir / "wide", wide, wide_data);
  const idx_array wide_read = read_idx(dir / "wide");
  CHECK(wide_read.dims == wide);
  CHECK(wide_read.data == wide_data);

  // Writing is atomic: only the final files remain, no temporaries.
  std::size_t entries = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir.path)) ++entries;
  CHECK(entries == 2);

  // Overwriting an existing file replaces it.
  write_idx(dir / "images", {2}, {7, 9});
  CHECK(read_idx(dir / "images").data == std::vector<std::uint8_t>{7, 9});
}

TEST_CASE("read_idx reads gzip-compressed files", "[idx]") {
  idx_temp_dir dir;
  const std::vector<std::int64_t> dims{5, 7, 3};
  const auto data = iota_bytes(105, 17);
  write_gzip(dir / "images.gz", idx_bytes(dir, dims, data));
  const idx_array read = read_idx(dir / "images.gz");
  CHECK(read.dims == dims);
  CHECK(read.data == data);

  // Corrupt compressed data is a data_error that names the file, not a crash or garbage.
  auto compressed = file_bytes(dir / "images.gz");
  for (std::size_t i = 12; i < compressed.size(); ++i) compressed[i] ^= 0x55;
  write_raw(dir / "corrupt.gz", compressed);
  REQUIRE_THROWS_AS(read_idx(dir / "corrupt.gz"), data_error);
  REQUIRE_THROWS_WITH(read_idx(dir / "corrupt.gz"),
                      Contains("read_idx") && Contains((dir / "corrupt.gz").string()));
}

TEST_CASE("read_idx rejects truncated files", "[idx]") {
  idx_temp_dir dir;
  const auto full = idx_bytes(dir, {2, 3, 4}, iota_bytes(24));

  SECTION("payload cut short") {
    write_raw(dir / "short", {full.begin(), full.end() - 4});
    REQUIRE_THROWS_AS(read_idx(dir / "short"), data_error);
    REQUIRE_THROWS_WITH(read_idx(dir / "short"),
                        Contains("read_idx") && Contains((dir / "short").string()) &&
                            Contains("expected 24 payload bytes after the header, found 20"));
  }
  SECTION("header cut short") {
    write_raw(dir / "short", {full.begin(), full.begin() + 9});
    REQUIRE_THROWS_WITH(read_idx(dir / "short"),
                        Contains("read_idx") && Contains("expected 12 header bytes"));
  }
  SECTION("magic number cut short, or an empty file") {
    write_raw(dir / "short", {0, 0});
    REQUIRE_THROWS_WITH(read_idx(dir / "short"), Contains("read_idx") && Contains("found 2 bytes"));
    write_raw(dir / "empty", {});
    REQUIRE_THROWS_WITH(read_idx(dir / "empty"), Contains("read_idx") && Contains("found 0 bytes"));
  }
  SECTION("gzip stream cut short") {
    write_gzip(dir / "full.gz", full);
    const auto compressed = file_bytes(dir / "full.gz");
    // Without the 8-byte trailer (CRC and length) the payload may be complete, but the file is
    // still damaged; without more than that the payload is short too.
    write_raw(dir / "no-trailer.gz", {compressed.begin(), compressed.end() - 8});
    REQUIRE_THROWS_WITH(read_idx(dir / "no-trailer.gz"),
                        Contains("read_idx") && Contains("gzip stream cut short"));
    write_raw(dir / "half.gz", {compressed.begin(), compressed.begin() + 20});
    REQUIRE_THROWS_AS(read_idx(dir / "half.gz"), data_error);
  }
}

TEST_CASE("read_idx rejects a wrong magic number", "[idx]") {
  idx_temp_dir dir;
  auto bytes = idx_bytes(dir, {4}, iota_bytes(4));
  const fs::path path = dir / "bad";

  SECTION("a non-byte type code, such as 0x0d (float)") {
    bytes[2] = 0x0d;
    write_raw(path, bytes);
    REQUIRE_THROWS_WITH(read_idx(path), Contains("read_idx") && Contains(path.string()) &&
                                            Contains("expected 0x000008NN") &&
                                            Contains("got 0x00000d01"));
  }
  SECTION("non-zero leading bytes") {
    bytes[0] = 0x12;
    bytes[1] = 0x34;
    write_raw(path, bytes);
    REQUIRE_THROWS_WITH(read_idx(path), Contains("got 0x12340801"));
  }
  SECTION("zero or more than four dimensions") {
    bytes[3] = 0;
    write_raw(path, bytes);
    REQUIRE_THROWS_WITH(read_idx(path), Contains("got 0x00000800"));
    bytes[3] = 5;
    write_raw(path, bytes);
    REQUIRE_THROWS_WITH(read_idx(path), Contains("got 0x00000805"));
  }
  SECTION("a text file") {
    const std::string text = "hello, world\n";
    write_raw(path, {text.begin(), text.end()});
    REQUIRE_THROWS_AS(read_idx(path), data_error);
  }
}

TEST_CASE("read_idx rejects headers that disagree with the payload", "[idx]") {
  idx_temp_dir dir;
  const fs::path path = dir / "bad";
  auto bytes = idx_bytes(dir, {2, 5}, iota_bytes(10));

  SECTION("header promises more bytes than the file has") {
    bytes[11] = 6;  // 2 x 6 = 12 > 10
    write_raw(path, bytes);
    REQUIRE_THROWS_WITH(read_idx(path),
                        Contains("expected 12 payload bytes after the header, found 10"));
  }
  SECTION("header promises fewer bytes than the file has") {
    bytes[11] = 4;  // 2 x 4 = 8 < 10
    write_raw(path, bytes);
    REQUIRE_THROWS_WITH(
        read_idx(path),
        Contains("read_idx") && Contains("expected 8 payload bytes after the header, found 10"));
    // The same holds inside a gzip stream.
    write_gzip(dir / "bad.gz", bytes);
    REQUIRE_THROWS_WITH(read_idx(dir / "bad.gz"),
                        Contains("expected 8 payload bytes after the header, found 10"));
  }
  SECTION("a zero dimension") {
    bytes[11] = 0;
    write_raw(path, bytes);
    REQUIRE_THROWS_WITH(read_idx(path), Contains("dimension 1 must be > 0"));
  }
  SECTION("a header asking for more than 2^32 bytes is refused before any allocation") {
    // 4 dimensions of 0xffffffff: the product overflows 64 bits if computed naively.
    std::vector<std::uint8_t> huge{0, 0, 8, 4};
    for (int i = 0; i < 16; ++i) huge.push_back(0xff);
    write_raw(path, huge);
    REQUIRE_THROWS_WITH(read_idx(path),
                        Contains("read_idx") && Contains("at most 4294967296") &&
                            Contains("the header asks for 4294967295 x 4294967295 x "
                                     "4294967295 x 4294967295"));
    // MNIST's image dimensions after an impossible count: the count is the wrong one, though
    // the product first overflows at the rows.
    write_raw(path, {0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 28, 0, 0, 0, 28});
    REQUIRE_THROWS_WITH(read_idx(path), Contains("the header asks for 4294967295 x 28 x 28"));
    // Within the limit but far beyond the file: reports the shortfall without allocating 4 GB.
    write_raw(path, {0, 0, 8, 2, 0, 1, 0, 0, 0, 1, 0, 0, 1, 2, 3});
    REQUIRE_THROWS_WITH(read_idx(path),
                        Contains("expected 4294967296 payload bytes after the header, found 3"));
  }
}

TEST_CASE("read_idx reports missing files and directories", "[idx]") {
  idx_temp_dir dir;
  const fs::path missing = dir / "no-such-file";
  REQUIRE_THROWS_AS(read_idx(missing), data_error);
  REQUIRE_THROWS_WITH(read_idx(missing), Contains("read_idx") && Contains(missing.string()) &&
                                             Contains("no such file"));
  REQUIRE_THROWS_WITH(read_idx(dir.path), Contains("read_idx") && Contains("is a directory"));
}

TEST_CASE("write_idx rejects dimensions that do not match the data", "[idx]") {
  idx_temp_dir dir;
  const fs::path path = dir / "out";
  REQUIRE_THROWS_AS(write_idx(path, {2, 3}, iota_bytes(5)), shape_error);
  REQUIRE_THROWS_WITH(write_idx(path, {2, 3}, iota_bytes(5)),
                      Contains("write_idx") && Contains("hold 6 bytes, data has 5"));
  REQUIRE_THROWS_AS(write_idx(path, {}, {}), shape_error);
  REQUIRE_THROWS_AS(write_idx(path, {1, 1, 1, 1, 1}, iota_bytes(1)), shape_error);
  REQUIRE_THROWS_AS(write_idx(path, {0}, {}), shape_error);
  REQUIRE_THROWS_AS(write_idx(path, {-1}, iota_bytes(1)), shape_error);
  CHECK(fs::is_empty(dir.path));  // nothing was written, not even a temporary
}

TEMPLATE_TEST_CASE("load_idx_pair scales pixels to [0, 1] and keeps the layout", "[idx]", float,
                   double) {
  idx_temp_dir dir;
  // 256 images of 1 x 1 cover every byte value; 2 images of 2 x 3 check the pixel order.
  write_idx(dir / "all-values", {256, 1, 1}, iota_bytes(256));
  write_idx(dir / "all-labels", {256}, iota_bytes(256));
  const auto all = bilevel::load_idx_pair<TestType>(dir / "all-values", dir / "all-labels");
  REQUIRE(all.images.rows() == 1);
  REQUIRE(all.images.cols() == 256);
  for (int v = 0; v < 256; ++v) {
    CHECK(all.images(0, v) == static_cast<TestType>(v) / TestType(255));
    CHECK(all.images(0, v) >= TestType(0));
    CHECK(all.images(0, v) <= TestType(1));
    CHECK(all.labels[static_cast<std::size_t>(v)] == v);
  }
  CHECK(all.images(0, 0) == TestType(0));
  CHECK(all.images(0, 255) == TestType(1));

  write_idx(dir / "images", {2, 2, 3}, {0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15});
  write_idx(dir / "labels", {2}, {7, 3});
  const auto set = bilevel::load_idx_pair<TestType>(dir / "images", dir / "labels");
  CHECK(set.rows == 2);
  CHECK(set.cols == 3);
  REQUIRE(set.images.rows() == 6);
  REQUIRE(set.images.cols() == 2);
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 3; ++c) {
      CHECK(set.images(r * 3 + c, 0) == TestType(r * 3 + c) / TestType(255));
      CHECK(set.images(r * 3 + c, 1) == TestType(10 + r * 3 + c) / TestType(255));
    }
  }
  CHECK(set.labels == std::vector<int>{7, 3});
}

TEST_CASE("load_idx_pair rejects mismatched counts and ranks", "[idx]") {
  idx_temp_dir dir;
  write_idx(dir / "images", {3, 2, 2}, iota_bytes(12));
  write_idx(dir / "labels", {4}, iota_bytes(4));
  REQUIRE_THROWS_AS(bilevel::load_idx_pair<double>(dir / "images", dir / "labels"), data_error);
  REQUIRE_THROWS_WITH(bilevel::load_idx_pair<double>(dir / "images", dir / "labels"),
                      Contains("load_idx_pair") && Contains("3 images") && Contains("4 labels"));

  write_idx(dir / "flat-images", {3, 4}, iota_bytes(12));
  REQUIRE_THROWS_WITH(bilevel::load_idx_pair<double>(dir / "flat-images", dir / "labels"),
                      Contains("load_idx_pair") && Contains("3 dimensions"));
  write_idx(dir / "square-labels", {2, 2}, iota_bytes(4));
  REQUIRE_THROWS_WITH(bilevel::load_idx_pair<double>(dir / "images", dir / "square-labels"),
                      Contains("load_idx_pair") && Contains("1 dimension"));
  // Errors in either file name that file.
  REQUIRE_THROWS_WITH(bilevel::load_idx_pair<double>(dir / "images", dir / "missing"),
                      Contains("read_idx") && Contains((dir / "missing").string()));
}

TEST_CASE("load_mnist finds plain and gzip files, preferring plain ones", "[idx]") {
  idx_temp_dir dir;
  const auto train_images = iota_bytes(5 * 4 * 3, 1);
  const auto test_images = iota_bytes(2 * 4 * 3, 100);
  // Training images plain, training labels compressed, test images compressed, test labels both
  // (the plain copy differs from the compressed one, to see which is used).
  write_idx(dir / "train-images-idx3-ubyte", {5, 4, 3}, train_images);
  write_gzip(dir / "train-labels-idx1-ubyte.gz", idx_bytes(dir, {5}, {0, 1, 2, 3, 4}));
  write_gzip(dir / "t10k-images-idx3-ubyte.gz", idx_bytes(dir, {2, 4, 3}, test_images));
  write_idx(dir / "t10k-labels-idx1-ubyte", {2}, {9, 8});
  write_gzip(dir / "t10k-labels-idx1-ubyte.gz", idx_bytes(dir, {2}, {1, 1}));

  const auto data = bilevel::load_mnist<float>(dir.path);
  CHECK(data.train.rows == 4);
  CHECK(data.train.cols == 3);
  CHECK(data.train.images.rows() == 12);
  CHECK(data.train.images.cols() == 5);
  CHECK(data.train.labels == std::vector<int>{0, 1, 2, 3, 4});
  CHECK(data.train.images(0, 0) == 1.0f / 255.0f);
  CHECK(data.test.images.cols() == 2);
  CHECK(data.test.images(11, 1) == static_cast<float>(100 + 23) / 255.0f);
  CHECK(data.test.labels == std::vector<int>{9, 8});
}

TEST_CASE("load_mnist reports a missing directory or file", "[idx]") {
  idx_temp_dir dir;
  const fs::path missing_dir = dir / "nowhere";
  REQUIRE_THROWS_AS(bilevel::load_mnist<double>(missing_dir), data_error);
  REQUIRE_THROWS_WITH(bilevel::load_mnist<double>(missing_dir),
                      Contains("load_mnist") && Contains(missing_dir.string()));

  write_idx(dir / "train-images-idx3-ubyte", {1, 2, 2}, iota_bytes(4));
  write_idx(dir / "train-labels-idx1-ubyte", {1}, {0});
  write_idx(dir / "t10k-images-idx3-ubyte", {1, 2, 2}, iota_bytes(4));
  REQUIRE_THROWS_WITH(
      bilevel::load_mnist<double>(dir.path),
      Contains("load_mnist") && Contains((dir / "t10k-labels-idx1-ubyte").string()));

  // With the last file present, but test images of a different size than the training ones.
  write_idx(dir / "t10k-labels-idx1-ubyte", {1}, {0});
  write_idx(dir / "t10k-images-idx3-ubyte", {1, 1, 4}, iota_bytes(4));
  REQUIRE_THROWS_WITH(bilevel::load_mnist<double>(dir.path),
                      Contains("load_mnist") && Contains("2x2") && Contains("1x4"));
}

TEST_CASE("read_idx refuses what is not a regular file and says why, in the system's words",
          "[idx][reliability]") {
  idx_temp_dir dir;
  // A FIFO would block the reader forever.
  const fs::path fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  REQUIRE_THROWS_WITH(read_idx(fifo), Contains(fifo.string()) && Contains("not a regular file"));
  const fs::path loop = dir / "loop";
  fs::create_symlink(dir / "loop-back", loop);
  fs::create_symlink(loop, dir / "loop-back");
  REQUIRE_THROWS_WITH(read_idx(loop), Contains("Too many levels of symbolic links"));
  write_idx(dir / "file", {1}, {0});
  REQUIRE_THROWS_WITH(bilevel::load_mnist<float>(dir / "file"), Contains("not a directory"));
}

TEST_CASE("the header is checked before the payload is inflated, and trailing data is bounded",
          "[idx][reliability]") {
  idx_temp_dir dir;
  // A gzip file whose header claims 16384 images of 256 x 256 pixels and holds 5 bytes: what the
  // caller's check says comes first, before any inflating (the payload would be reported short).
  write_gzip(dir / "forged.gz", {0, 0, 8, 3, 0, 0, 64, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 2, 3, 4, 5});
  std::vector<std::int64_t> seen;
  REQUIRE_THROWS_WITH(read_idx(dir / "forged.gz",
                               [&](const std::vector<std::int64_t>& dims) {
                                 seen = dims;
                                 throw bilevel::data_error("refused by the caller");
                               }),
                      Contains("refused by the caller"));
  CHECK(seen == std::vector<std::int64_t>{16384, 256, 256});
  write_idx(dir / "labels", {2}, {0, 1});
  REQUIRE_THROWS_WITH(bilevel::load_idx_pair<float>(dir / "forged.gz", dir / "labels"),
                      Contains("holds 16384 images") && Contains("holds 2 labels"));
  write_idx(dir / "images", {2, 2, 2}, iota_bytes(8));
  REQUIRE_THROWS_WITH(bilevel::load_idx_pair<float>(dir / "images", dir / "labels", 9),
                      Contains("images are 2x2 (4 pixels), expected 9 pixels"));
  CHECK(bilevel::load_idx_pair<float>(dir / "images", dir / "labels", 4).images.cols() == 2);
  // Megabytes past the payload: refused after one chunk, with the size it has seen.
  std::vector<std::uint8_t> padded = idx_bytes(dir, {2}, {0, 1});
  padded.resize(padded.size() + (std::size_t{8} << 20));
  write_gzip(dir / "padded.gz", padded);
  REQUIRE_THROWS_WITH(read_idx(dir / "padded.gz"),
                      Contains("expected 2 payload bytes after the header, found at least 65538"));
}

TEST_CASE("labels out of range are refused, naming the file and the label", "[idx][reliability]") {
  idx_temp_dir dir;
  write_idx(dir / "images", {3, 2, 2}, iota_bytes(12));
  write_idx(dir / "labels", {3}, {4, 9, 10});
  REQUIRE_THROWS_AS(bilevel::load_idx_pair<float>(dir / "images", dir / "labels", 0, 10),
                    data_error);
  REQUIRE_THROWS_WITH(bilevel::load_idx_pair<float>(dir / "images", dir / "labels", 0, 10),
                      Contains((dir / "labels").string()) && Contains("label 2 is 10") &&
                          Contains("expected 0 to 9"));
  CHECK(bilevel::load_idx_pair<float>(dir / "images", dir / "labels", 0, 11).labels.back() == 10);
}
