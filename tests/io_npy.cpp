// NumPy .npy files (io/npy.hpp): the exact bytes the writer produces, files written byte by
// byte here in both orders and both versions, every refusal with its message, export/import of
// a program's parameters (bit-identical, across scalar types, all or nothing), the manifest, and,
// when python3 has numpy, NumPy itself reading our files and writing files we read.

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <bit>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "bilevel/bilevel.hpp"
#include "helpers.hpp"

namespace fs = std::filesystem;
using namespace bilevel;
using namespace bilevel::testing;
using Catch::Matchers::Contains;
using Catch::Matchers::EndsWith;
using Catch::Matchers::Equals;
using Catch::Matchers::StartsWith;

/// Both the type and the message of the exception.
#define REQUIRE_DATA_ERROR(expression, matcher)     \
  do {                                              \
    REQUIRE_THROWS_AS(expression, data_error);      \
    REQUIRE_THROWS_WITH(expression, matcher);       \
  } while (false)

namespace {

using bytes_t = std::vector<std::uint8_t>;

/// A scratch directory for one test case.
struct npy_temp_dir : testing::scratch_directory {
  npy_temp_dir() : scratch_directory("bilevel-npy-test-") {}
};

bytes_t file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_raw(const fs::path& path, const bytes_t& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

void append_text(bytes_t& bytes, std::string_view text) {
  bytes.insert(bytes.end(), text.begin(), text.end());
}

/// IEEE bits of `value`, least significant byte first (what '<f8' and '<f4' mean).
void append_f64(bytes_t& bytes, double value) {
  const auto bits = std::bit_cast<std::uint64_t>(value);
  for (int b = 0; b < 8; ++b) bytes.push_back(std::uint8_t(bits >> (8 * b)));
}
void append_f32(bytes_t& bytes, float value) {
  const auto bits = std::bit_cast<std::uint32_t>(value);
  for (int b = 0; b < 4; ++b) bytes.push_back(std::uint8_t(bits >> (8 * b)));
}

/// An .npy file made here, independent of the writer: magic, version major.0, the header length
/// (u16 for 1, u32 for 2), `dict` with spaces and '\n' to a multiple of 64 when `pad`, the data.
bytes_t npy_file(std::string dict, const bytes_t& data, int major = 1, bool pad = true) {
  bytes_t bytes{0x93, 'N', 'U', 'M', 'P', 'Y', std::uint8_t(major), 0};
  const std::size_t preamble = major == 1 ? 10 : 12;
  if (pad) {
    while ((preamble + dict.size() + 1) % 64 != 0) dict += ' ';
    dict += '\n';
  }
  for (std::size_t b = 0; b < (major == 1 ? 2u : 4u); ++b)
    bytes.push_back(std::uint8_t(dict.size() >> (8 * b)));
  append_text(bytes, dict);
  bytes.insert(bytes.end(), data.begin(), data.end());
  return bytes;
}

/// The 2 x 3 matrix of the hand-written files.
Matrix<double> expected_2x3() {
  Matrix<double> m(2, 3);
  m << 1.5, -2.0, 0.25,  //
      3.0, 100.0, -0.125;
  return m;
}

bytes_t data_f64(const std::vector<double>& values) {
  bytes_t bytes;
  for (const double v : values) append_f64(bytes, v);
  return bytes;
}

bytes_t data_f32(const std::vector<float>& values) {
  bytes_t bytes;
  for (const float v : values) append_f32(bytes, v);
  return bytes;
}

/// The 2 x 3 matrix in C (row-major) order, as float64.
bytes_t c_order_2x3() { return data_f64({1.5, -2.0, 0.25, 3.0, 100.0, -0.125}); }

template <class S>
bool same_bits(const Matrix<S>& a, const Matrix<S>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), std::size_t(a.size()) * sizeof(S)) == 0;
}

template <class S>
bool same_bits(const Vector<S>& a, const Vector<S>& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), std::size_t(a.size()) * sizeof(S)) == 0;
}

/// A small MLP with random parameters and a few awkward values (-0, a denormal, the largest).
template <class S>
mlp<S, relu> random_mlp(std::uint64_t seed) {
  auto net = make_mlp<S, relu>({5, 7, 4, 3});
  random_source random(seed);
  randomize(net, random);
  net.parameters()(0) = -S(0);
  net.parameters()(1) = std::numeric_limits<S>::denorm_min();
  net.parameters()(net.parameter_count() - 1) = std::numeric_limits<S>::max();
  return net;
}

std::set<std::string> listing(const fs::path& directory) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(directory))
    names.insert(entry.path().filename().string());
  return names;
}

std::string read_text(const fs::path& path) {
  const bytes_t bytes = file_bytes(path);
  return {bytes.begin(), bytes.end()};
}

}  // namespace

TEST_CASE("write_npy writes NPY 1.0: magic, version, length, the dict, padding to 64, the data",
          "[npy][io]") {
  npy_temp_dir dir;
  SECTION("a float matrix: 2-D, Fortran order, column-major data") {
    Matrix<float> m(2, 3);
    m << 1.5f, -2.0f, 0.25f,  //
        3.0f, 100.0f, -0.125f;
    write_npy(dir / "m.npy", m);
    const bytes_t bytes = file_bytes(dir / "m.npy");
    const std::string dict = "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }";
    // 10 + 58 + 1 = 69 bytes would follow: padded to 128, so the header is 118 bytes.
    REQUIRE(bytes.size() == 128 + 6 * 4);
    CHECK(bytes_t(bytes.begin(), bytes.begin() + 6) == bytes_t{0x93, 'N', 'U', 'M', 'P', 'Y'});
    CHECK(bytes[6] == 1);
    CHECK(bytes[7] == 0);
    CHECK(bytes[8] == 118);
    CHECK(bytes[9] == 0);
    const std::string header(bytes.begin() + 10, bytes.begin() + 128);
    CHECK(header == dict + std::string(118 - dict.size() - 1, ' ') + "\n");
    const bytes_t data(bytes.begin() + 128, bytes.end());
    CHECK(data == data_f32({1.5f, 3.0f, -2.0f, 100.0f, 0.25f, -0.125f}));
  }
  SECTION("a double vector: 1-D shape (n,)") {
    Vector<double> v(4);
    v << 1.0, -0.5, 1e300, -0.0;
    write_npy(dir / "v.npy", v);
    const bytes_t bytes = file_bytes(dir / "v.npy");
    const std::string dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }";
    // 10 + 57 + 1 = 68 -> 128.
    REQUIRE(bytes.size() == 128 + 4 * 8);
    CHECK(bytes[6] == 1);
    CHECK(bytes[7] == 0);
    CHECK((bytes[8] | (bytes[9] << 8)) == 118);
    CHECK(std::string(bytes.begin() + 10, bytes.begin() + 128) ==
          dict + std::string(118 - dict.size() - 1, ' ') + "\n");
    CHECK(bytes_t(bytes.begin() + 128, bytes.end()) == data_f64({1.0, -0.5, 1e300, -0.0}));
  }
  SECTION("every preamble is a multiple of 64, whatever the dict's length") {
    for (const Index rows : {1, 9, 99, 12345, 123456789}) {
      Matrix<float> m = Matrix<float>::Zero(rows > 1000 ? 1 : rows, 1);
      const bytes_t bytes = npy_bytes(m);
      const std::size_t length = bytes[8] | (bytes[9] << 8);
      CHECK((10 + length) % 64 == 0);
      CHECK(bytes[10 + length - 1] == '\n');
      CHECK(bytes.size() == 10 + length + std::size_t(m.size()) * 4);
    }
  }
  SECTION("a block of a larger matrix is written as its own values") {
    Matrix<double> big(4, 5);
    for (Index j = 0; j < 5; ++j)
      for (Index i = 0; i < 4; ++i) big(i, j) = double(10 * i + j);
    write_npy(dir / "block.npy", big.block(1, 2, 2, 3));
    const npy_array<double> read = read_npy<double>(dir / "block.npy");
    CHECK(read.shape == std::vector<Index>{2, 3});
    CHECK(read.values == Matrix<double>(big.block(1, 2, 2, 3)));
    // An expression is evaluated; a row vector is a 1 x n matrix.
    write_npy(dir / "transposed.npy", big.transpose());
    const npy_array<double> transposed = read_npy<double>(dir / "transposed.npy");
    CHECK(transposed.shape == std::vector<Index>{5, 4});
    CHECK(transposed.values == big.transpose());
    write_npy(dir / "row.npy", RowVector<double>(big.row(2)));
    const npy_array<double> row = read_npy<double>(dir / "row.npy");
    CHECK(row.shape == std::vector<Index>{1, 5});
    CHECK(row.values == big.row(2));
  }
}

TEMPLATE_TEST_CASE("an MLP's parameters round-trip bit-identically through export_npy and "
                   "import_npy",
                   "[npy][io]", float, double) {
  using S = TestType;
  npy_temp_dir dir;
  const auto net = random_mlp<S>(11);
  export_npy(dir.path, net);
  // Written atomically: no temporary is left next to the files.
  CHECK(listing(dir.path) == std::set<std::string>{"W1.npy", "W2.npy", "W3.npy", "b1.npy",
                                                   "b2.npy", "b3.npy", "manifest.json"});
  auto loaded = make_mlp<S, relu>({5, 7, 4, 3});
  import_npy(dir.path, loaded);
  CHECK(same_bits<S>(loaded.parameters(), net.parameters()));

  // The low-level functions alone, on one weight matrix and one bias.
  const npy_array<S> w2 = read_npy<S>(dir / "W2.npy");
  CHECK(w2.shape == std::vector<Index>{4, 7});
  CHECK(same_bits<S>(w2.values, Matrix<S>(net.weights(1))));
  const npy_array<S> b3 = read_npy<S>(dir / "b3.npy");
  CHECK(b3.shape == std::vector<Index>{3});
  CHECK(same_bits<S>(Vector<S>(b3.values.col(0)), Vector<S>(net.bias(2))));
}

TEST_CASE("export_npy from float, import_npy into double, and back", "[npy][io]") {
  npy_temp_dir dir;
  SECTION("float to double is exact") {
    const auto net = random_mlp<float>(5);
    export_npy(dir.path, net);
    auto wide = make_mlp<double, relu>({5, 7, 4, 3});
    import_npy(dir.path, wide);
    CHECK(same_bits<double>(wide.parameters(), net.parameters().cast<double>().eval()));
  }
  SECTION("double to float rounds to nearest") {
    auto net = make_mlp<double, relu>({5, 7, 4, 3});
    random_source random(6);
    randomize(net, random);
    export_npy(dir.path, net);
    auto narrow = make_mlp<float, relu>({5, 7, 4, 3});
    import_npy(dir.path, narrow);
    CHECK(same_bits<float>(narrow.parameters(), net.parameters().cast<float>().eval()));
    CHECK(narrow.parameters().cast<double>() != net.parameters());  // rounding did happen
  }
}

TEST_CASE("read_npy reads files written here byte by byte, in C and Fortran order", "[npy][io]") {
  npy_temp_dir dir;
  const fs::path path = dir / "hand.npy";
  SECTION("C order, float64, written out in full") {
    // 10 + 59 + 1 = 70 -> 128: 58 spaces, '\n'; header length 118 = 0x76.
    bytes_t bytes{0x93, 'N', 'U', 'M', 'P', 'Y', 0x01, 0x00, 0x76, 0x00};
    append_text(bytes, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }");
    append_text(bytes, std::string(58, ' ') + "\n");
    REQUIRE(bytes.size() == 128);
    for (const std::uint64_t bits : {0x3FF8000000000000ull, 0xC000000000000000ull,
                                     0x3FD0000000000000ull, 0x4008000000000000ull,
                                     0x4059000000000000ull, 0xBFC0000000000000ull})
      for (int b = 0; b < 8; ++b) bytes.push_back(std::uint8_t(bits >> (8 * b)));
    write_raw(path, bytes);
    const npy_array<double> read = read_npy<double>(path);
    CHECK(read.shape == std::vector<Index>{2, 3});
    CHECK(read.values == expected_2x3());
    CHECK(read.values(0, 2) == 0.25);
    CHECK(read.values(1, 0) == 3.0);
  }
  SECTION("Fortran order, float32") {
    write_raw(path, npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }",
                             data_f32({1.5f, 3.0f, -2.0f, 100.0f, 0.25f, -0.125f})));
    const npy_array<float> read = read_npy<float>(path);
    CHECK(read.shape == std::vector<Index>{2, 3});
    CHECK(read.values == expected_2x3().cast<float>());
  }
  SECTION("C order, a taller matrix (not a transposition by accident)") {
    // 3 x 2 [[1, 2], [3, 4], [5, 6]] row by row.
    write_raw(path, npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }",
                             data_f32({1, 2, 3, 4, 5, 6})));
    const npy_array<double> read = read_npy<double>(path);
    Matrix<double> expected(3, 2);
    expected << 1, 2, 3, 4, 5, 6;
    CHECK(read.shape == std::vector<Index>{3, 2});
    CHECK(read.values == expected);
  }
  SECTION("version 2.0, '|f8', double quotes, other key order, no trailing comma, no padding") {
    write_raw(path, npy_file("{\"shape\":(2,3),\"descr\":\"|f8\",  \"fortran_order\":False}\n",
                             c_order_2x3(), 2, false));
    const npy_array<double> read = read_npy<double>(path);
    CHECK(read.values == expected_2x3());
  }
  SECTION("'=f4' (native order, little-endian here), 1-D") {
    write_raw(path, npy_file("{'descr': '=f4', 'fortran_order': False, 'shape': (4,), }",
                             data_f32({0.5f, -1.0f, 2.0f, 8.0f})));
    const npy_array<float> read = read_npy<float>(path);
    CHECK(read.shape == std::vector<Index>{4});
    CHECK(read.values.rows() == 4);
    CHECK(read.values.cols() == 1);
    CHECK(read.values(3, 0) == 8.0f);
    CHECK(read.values(1, 0) == -1.0f);
  }
  SECTION("a 2-D single column keeps its shape (3, 1)") {
    write_raw(path, npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 1), }",
                             data_f64({1, 2, 3})));
    CHECK(read_npy<double>(path).shape == std::vector<Index>{3, 1});
  }
  SECTION("an empty array") {
    write_raw(path, npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 3), }", {}));
    const npy_array<double> read = read_npy<double>(path);
    CHECK(read.shape == std::vector<Index>{0, 3});
    CHECK(read.values.size() == 0);
  }
  SECTION("float64 into float rounds to nearest") {
    write_raw(path, npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
                             data_f64({0.1, 1.0 + 1e-12})));
    const npy_array<float> read = read_npy<float>(path);
    CHECK(read.values(0, 0) == 0.1f);
    CHECK(read.values(1, 0) == 1.0f);
  }
}

TEST_CASE("read_npy reads more dimensions as NumPy's reshape(n0, -1), in C and Fortran order",
          "[npy][io]") {
  npy_temp_dir dir;
  const fs::path path = dir / "cube.npy";
  // Entry i of the file holds the number i.
  bytes_t data;
  for (int i = 0; i < 24; ++i) append_f64(data, double(i));
  SECTION("C order: (i0, i1, i2) at (i0 * 3 + i1) * 4 + i2") {
    write_raw(path, npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3, 4), }",
                             data));
    const npy_array<double> read = read_npy<double>(path);
    CHECK(read.shape == std::vector<Index>{2, 3, 4});
    REQUIRE(read.values.rows() == 2);
    REQUIRE(read.values.cols() == 12);
    for (Index i0 = 0; i0 < 2; ++i0)
      for (Index column = 0; column < 12; ++column)
        CHECK(read.values(i0, column) == double(i0 * 12 + column));
  }
  SECTION("Fortran order: (i0, i1, i2) at i0 + 2 * (i1 + 3 * i2), read into column i1 * 4 + i2") {
    write_raw(path, npy_file("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3, 4), }",
                             data));
    const npy_array<double> read = read_npy<double>(path);
    REQUIRE(read.values.rows() == 2);
    REQUIRE(read.values.cols() == 12);
    for (Index i0 = 0; i0 < 2; ++i0)
      for (Index i1 = 0; i1 < 3; ++i1)
        for (Index i2 = 0; i2 < 4; ++i2)
          CHECK(read.values(i0, i1 * 4 + i2) == double(i0 + 2 * (i1 + 3 * i2)));
  }
  SECTION("four dimensions in Fortran order") {
    write_raw(path, npy_file("{'descr': '<f8', 'fortran_order': True, 'shape': (3, 2, 2, 2), }",
                             data));
    const npy_array<double> read = read_npy<double>(path);
    REQUIRE(read.values.cols() == 8);
    for (Index i0 = 0; i0 < 3; ++i0)
      for (Index i1 = 0; i1 < 2; ++i1)
        for (Index i2 = 0; i2 < 2; ++i2)
          for (Index i3 = 0; i3 < 2; ++i3)
            CHECK(read.values(i0, (i1 * 2 + i2) * 2 + i3) ==
                  double(i0 + 3 * (i1 + 2 * (i2 + 2 * i3))));
  }
}

TEST_CASE("read_npy refuses what the format does not allow, naming the file, the expected and "
          "the found",
          "[npy][io]") {
  npy_temp_dir dir;
  const fs::path path = dir / "bad.npy";
  const std::string where = "read_npy: " + path.string() + ": ";
  const std::string good_dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }";
  // The same file with its header's dict replaced.
  const auto with_dict = [&](const std::string& dict, const bytes_t& data) {
    write_raw(path, npy_file(dict, data));
  };

  SECTION("bad magic") {
    bytes_t bytes = npy_file(good_dict, c_order_2x3());
    bytes[5] = 'Z';
    write_raw(path, bytes);
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "not a NumPy .npy file: expected the magic \\x93NUMPY, "
                                      "found \"\\x93NUMPZ\""));
    write_raw(path, {});
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "not a NumPy .npy file: expected the magic \\x93NUMPY, "
                                      "found an empty file"));
    write_raw(path, {'P', 'K', 3, 4, 20, 0, 0, 0});
    REQUIRE_DATA_ERROR(read_npy<double>(path), StartsWith(where + "not a NumPy .npy file") &&
                                                   Contains("found \"PK\\x03\\x04\\x14\\x00\"") &&
                                                   Contains("an .npz file holds .npy files"));
  }
  SECTION("truncated preamble") {
    write_raw(path, {0x93, 'N', 'U', 'M', 'P', 'Y', 1});
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "truncated preamble: expected 2 version bytes after the "
                                      "magic, found 1"));
    write_raw(path, {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0x76});
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "truncated preamble: expected 2 bytes of header length "
                                      "(version 1.0), found 1"));
    write_raw(path, {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 0x76, 0, 0});
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "truncated preamble: expected 4 bytes of header length "
                                      "(version 2.0), found 3"));
  }
  SECTION("other versions") {
    for (const auto& [major, minor] : {std::pair{3, 0}, std::pair{1, 1}, std::pair{0, 0}}) {
      bytes_t bytes = npy_file(good_dict, c_order_2x3());
      bytes[6] = std::uint8_t(major);
      bytes[7] = std::uint8_t(minor);
      write_raw(path, bytes);
      REQUIRE_DATA_ERROR(read_npy<double>(path),
                         Equals(where + "unsupported .npy format version " +
                                std::to_string(major) + "." + std::to_string(minor) +
                                ": expected 1.0 or 2.0"));
    }
  }
  SECTION("truncated header") {
    bytes_t bytes = npy_file(good_dict, c_order_2x3());
    bytes.resize(60);
    write_raw(path, bytes);
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "truncated header: expected 118 header bytes after the "
                                      "10-byte preamble, found 50"));
    // A version 2.0 length near 4 GiB is compared with the file, not allocated.
    bytes = {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 0xFF, 0xFF, 0xFF, 0xFF, '{', '}'};
    write_raw(path, bytes);
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "truncated header: expected 4294967295 header bytes after "
                                      "the 12-byte preamble, found 2"));
  }
  SECTION("other types and big-endian data") {
    with_dict("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", bytes_t(24));
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "unsupported descr '<i4': expected '<f4' or '<f8' "
                                      "(little-endian float32 or float64)"));
    with_dict("{'descr': '>f8', 'fortran_order': False, 'shape': (2, 3), }", c_order_2x3());
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "unsupported descr '>f8': expected '<f4' or '<f8' "
                                      "(little-endian float32 or float64), found big-endian data"));
    for (const char* descr : {"<f2", "<f16", "<c16", "f8", "<f8 ", "", "|u1"}) {
      with_dict(std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (2,), }",
                bytes_t(16));
      REQUIRE_DATA_ERROR(read_npy<double>(path),
                         StartsWith(where + "unsupported descr '" + descr + "': expected"));
    }
  }
  SECTION("0-D arrays") {
    with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (), }", bytes_t(8));
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "unsupported shape (): expected at least 1 dimension, "
                                      "found 0"));
  }
  SECTION("truncated data and extra trailing bytes") {
    bytes_t data = c_order_2x3();
    data.resize(40);
    with_dict(good_dict, data);
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "shape (2, 3) of '<f8' needs 48 bytes of data after the "
                                      "header, found 40 (truncated)"));
    data = c_order_2x3();
    data.push_back(0);
    with_dict(good_dict, data);
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "shape (2, 3) of '<f8' needs 48 bytes of data after the "
                                      "header, found 49 (extra trailing bytes)"));
    with_dict("{'descr': '<f4', 'fortran_order': True, 'shape': (3,), }", bytes_t(11));
    REQUIRE_DATA_ERROR(read_npy<float>(path),
                       Equals(where + "shape (3,) of '<f4' needs 12 bytes of data after the "
                                      "header, found 11 (truncated)"));
  }
  SECTION("absurd sizes: overflow is refused, a huge shape is compared with the file") {
    with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904, 4), }",
              {});
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       Equals(where + "shape (4611686018427387904, 4) of '<f8' overflows: more "
                                      "than 9223372036854775807 bytes"));
    with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (2305843009213693952,), }", {});
    REQUIRE_DATA_ERROR(read_npy<double>(path), Contains("overflows"));
    // No data, but columns beyond any matrix: the trailing extents overflow on their own.
    with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 4611686018427387904, 4), }",
              {});
    REQUIRE_DATA_ERROR(read_npy<double>(path), Contains("overflows"));
    with_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000, 1000000000), }",
              bytes_t(8));
    REQUIRE_DATA_ERROR(read_npy<float>(path),
                       Equals(where + "shape (1000000000, 1000000000) of '<f4' needs "
                                      "4000000000000000000 bytes of data after the header, found "
                                      "8 (truncated)"));
    with_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999,), }", {});
    REQUIRE_DATA_ERROR(read_npy<double>(path),
                       StartsWith(where + "cannot parse the header {'descr': '<f8', ") &&
                           EndsWith("expected a dimension of at most 9223372036854775807 at "
                                    "character 69"));
  }
  SECTION("headers that do not parse") {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"", "expected '{' opening the header dict at character 0"},
        {"{'descr': '<f8', 'fortran_order': False}",
         "expected the keys 'descr', 'fortran_order' and 'shape', found no 'shape' at character "
         "40"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}",
         "expected the keys 'descr', 'fortran_order' and 'shape' once each, found key 'extra' at "
         "character 58"},
        {"{'descr': '<f8', 'descr': '<f8', 'fortran_order': False, 'shape': (2, 3)}",
         "found key 'descr' twice at character 17"},
        {"{'descr': '<f8', 'fortran_order': 1, 'shape': (2, 3)}",
         "expected True or False for 'fortran_order' at character 34"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (6)}",
         "expected ',' after the only dimension of a 1-D shape at character 52"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (-6,)}",
         "expected a non-negative integer in 'shape' at character 51"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3)} x",
         "expected nothing but spaces after the dict's '}' at character 58"},
        {"{'descr': '<f8' 'fortran_order': False, 'shape': (2, 3)}",
         "expected ',' or '}' after a value at character 16"},
        {"{'descr: '<f8', 'fortran_order': False, 'shape': (2, 3)}",
         "expected ':' after a key at character 10"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3",
         "expected ',' or ')' in the shape tuple at character 55"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), 'x",
         "expected a closing ' at character 59"},
        {"\x01\xff", "expected '{' opening the header dict at character 0"},
    };
    for (const auto& [dict, expected] : cases) {
      INFO(dict);
      write_raw(path, npy_file(dict, c_order_2x3(), 1, false));
      REQUIRE_DATA_ERROR(read_npy<double>(path),
                         StartsWith(where + "cannot parse the header ") && EndsWith(expected));
    }
    // The header is shown with its unprintable bytes escaped.
    write_raw(path, npy_file("\x01\xff", {}, 1, false));
    REQUIRE_THROWS_WITH(read_npy<double>(path), Contains("the header \\x01\\xff: expected"));
  }
  SECTION("every truncation of a valid file is refused") {
    const bytes_t valid = npy_file(good_dict, c_order_2x3());
    for (std::size_t size = 0; size < valid.size(); ++size) {
      write_raw(path, bytes_t(valid.begin(), valid.begin() + std::ptrdiff_t(size)));
      REQUIRE_DATA_ERROR(read_npy<double>(path), StartsWith(where));
    }
    write_raw(path, valid);
    CHECK(read_npy<double>(path).values == expected_2x3());
  }
}

TEST_CASE("read_npy refuses what is not a regular file", "[npy][io]") {
  npy_temp_dir dir;
  const fs::path missing = dir / "missing.npy";
  REQUIRE_DATA_ERROR(read_npy<double>(missing),
                     Equals("read_npy: cannot read " + missing.string() + ": no such file"));
  REQUIRE_DATA_ERROR(read_npy<double>(dir.path),
                     Equals("read_npy: cannot read " + dir.path.string() + ": is a directory"));
  const fs::path fifo = dir / "fifo.npy";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  REQUIRE_DATA_ERROR(read_npy<double>(fifo),
                     Equals("read_npy: cannot read " + fifo.string() +
                            ": not a regular file (a FIFO, socket or device)"));
}

TEST_CASE("import_npy refuses files that do not fit the program and changes nothing", "[npy][io]") {
  npy_temp_dir dir;
  const auto saved = random_mlp<double>(21);
  export_npy(dir.path, saved);
  auto net = random_mlp<double>(22);
  const Vector<double> before = net.parameters();
  const std::string prefix = "import_npy: " + dir.path.string() + "/";

  SECTION("other layer sizes") {
    auto other = make_mlp<double, relu>({5, 6, 4, 3});
    const Vector<double> other_before = other.parameters();
    REQUIRE_DATA_ERROR(import_npy(dir.path, other),
                       Equals(prefix + "W1.npy: expected shape (6, 5), found (7, 5)"));
    CHECK(same_bits<double>(other.parameters(), other_before));
  }
  SECTION("a transposed weight matrix in the last layer: the earlier files were read already") {
    write_npy(dir / "W3.npy", Matrix<double>(saved.weights(2).transpose()));
    REQUIRE_DATA_ERROR(import_npy(dir.path, net),
                       Equals(prefix + "W3.npy: expected shape (3, 4), found (4, 3)"));
  }
  SECTION("the last bias too long, or 2-D") {
    write_npy(dir / "b3.npy", Vector<double>::Zero(4));
    REQUIRE_DATA_ERROR(import_npy(dir.path, net),
                       Equals(prefix + "b3.npy: expected shape (3,), found (4,)"));
    write_npy(dir / "b3.npy", Matrix<double>::Zero(3, 1));
    REQUIRE_DATA_ERROR(import_npy(dir.path, net),
                       Equals(prefix + "b3.npy: expected shape (3,), found (3, 1)"));
  }
  SECTION("a missing file") {
    fs::remove(dir / "b2.npy");
    REQUIRE_DATA_ERROR(import_npy(dir.path, net),
                       Equals("import_npy: cannot read " + (dir / "b2.npy").string() +
                              ": no such file"));
  }
  SECTION("a damaged file names import_npy and the file") {
    bytes_t bytes = file_bytes(dir / "W2.npy");
    bytes.pop_back();
    write_raw(dir / "W2.npy", bytes);
    REQUIRE_DATA_ERROR(import_npy(dir.path, net),
                       Equals(prefix + "W2.npy: shape (4, 7) of '<f8' needs 224 bytes of data "
                                       "after the header, found 223 (truncated)"));
  }
  SECTION("a NaN, or a float64 beyond float's range") {
    Vector<double> bias = saved.bias(2);
    bias(1) = std::numeric_limits<double>::quiet_NaN();
    write_npy(dir / "b3.npy", bias);
    REQUIRE_DATA_ERROR(import_npy(dir.path, net),
                       Equals(prefix + "b3.npy: expected finite values, found a NaN or Inf"));
    bias(1) = 1e300;
    write_npy(dir / "b3.npy", bias);
    auto narrow = random_mlp<float>(23);
    const Vector<float> narrow_before = narrow.parameters();
    REQUIRE_DATA_ERROR(import_npy(dir.path, narrow),
                       Equals(prefix + "b3.npy: expected finite values, found a NaN or Inf (or "
                                       "a float64 beyond float's range)"));
    CHECK(same_bits<float>(narrow.parameters(), narrow_before));
  }
  CHECK(same_bits<double>(net.parameters(), before));
}

TEST_CASE("export_npy and import_npy need an existing directory", "[npy][io]") {
  npy_temp_dir dir;
  auto net = random_mlp<float>(3);
  const fs::path missing = dir / "missing";
  REQUIRE_DATA_ERROR(export_npy(missing, net),
                     Equals("export_npy: " + missing.string() +
                            ": expected an existing directory, found nothing there"));
  CHECK_FALSE(fs::exists(missing));
  write_raw(dir / "file", {1, 2, 3});
  REQUIRE_DATA_ERROR(export_npy(dir / "file", net),
                     Equals("export_npy: " + (dir / "file").string() +
                            ": expected an existing directory, found a file that is not a "
                            "directory"));
  REQUIRE_DATA_ERROR(import_npy(missing, net),
                     Equals("import_npy: " + missing.string() +
                            ": expected an existing directory, found nothing there"));
  // A directory we may not write into: the write's own error names export_npy and the file.
  if (::geteuid() != 0) {
    const fs::path locked = dir / "locked";
    fs::create_directory(locked);
    fs::permissions(locked, fs::perms::owner_read | fs::perms::owner_exec);
    REQUIRE_DATA_ERROR(export_npy(locked, net),
                       StartsWith("export_npy: cannot write " + (locked / "W1.npy").string()));
    fs::permissions(locked, fs::perms::owner_all);
  }
}

TEST_CASE("manifest.json describes the architecture, the files, their shapes and the dtype",
          "[npy][io]") {
  npy_temp_dir dir;
  using net_type = program<double, mse, leaky_relu, identity>;
  const net_type net({3, 4, 2}, {leaky_relu(0.25), identity{}});
  export_npy(dir.path, net);
  const auto manifest = nlohmann::json::parse(read_text(dir / "manifest.json"));
  CHECK(manifest.at("format") == "bilevel npy export");
  CHECK(manifest.at("version") == 1);
  CHECK(manifest.at("dtype") == "float64");
  CHECK(manifest.at("loss") == "mse");
  CHECK(manifest.at("layer_sizes") == nlohmann::json::array({3, 4, 2}));
  CHECK(manifest.at("pre_activation") == "W @ x + b[:, None], x with one sample per column");
  const auto& layers = manifest.at("layers");
  REQUIRE(layers.size() == 2);
  CHECK(layers[0].at("layer") == 1);
  CHECK(layers[0].at("inputs") == 3);
  CHECK(layers[0].at("outputs") == 4);
  CHECK(layers[0].at("activation") == "leaky_relu");
  CHECK(layers[0].at("hyperparameters") == nlohmann::json::array({0.25}));
  CHECK(layers[0].at("weights").at("file") == "W1.npy");
  CHECK(layers[0].at("weights").at("shape") == nlohmann::json::array({4, 3}));
  CHECK(layers[0].at("bias").at("file") == "b1.npy");
  CHECK(layers[0].at("bias").at("shape") == nlohmann::json::array({4}));
  CHECK(layers[1].at("activation") == "identity");
  CHECK_FALSE(layers[1].contains("hyperparameters"));
  CHECK(layers[1].at("weights").at("file") == "W2.npy");
  CHECK(layers[1].at("weights").at("shape") == nlohmann::json::array({2, 4}));
  CHECK(layers[1].at("bias").at("shape") == nlohmann::json::array({2}));
  // Each file holds what the manifest says.
  for (const auto& layer : layers)
    for (const char* part : {"weights", "bias"}) {
      const npy_array<double> array =
          read_npy<double>(dir / layer.at(part).at("file").get<std::string>());
      CHECK(nlohmann::json(array.shape) == layer.at(part).at("shape"));
    }

  const auto floats = random_mlp<float>(4);
  export_npy(dir.path, floats);
  const auto float_manifest = nlohmann::json::parse(read_text(dir / "manifest.json"));
  CHECK(float_manifest.at("dtype") == "float32");
  CHECK(float_manifest.at("loss") == "softmax_cross_entropy");
  CHECK(float_manifest.at("layers")[0].at("activation") == "relu");
  CHECK(float_manifest.at("layers").size() == 3);
}

TEST_CASE("JSON strings in the manifest are escaped", "[npy][io]") {
  CHECK(detail::json_string("a\"b\\c\nd") == "\"a\\\"b\\\\c\\u000ad\"");
  CHECK(nlohmann::json::parse(detail::json_string("x\"\\\t\x01y")) == "x\"\\\t\x01y");
  CHECK(detail::json_number(0.1) == "0.10000000000000001");
  CHECK(detail::json_number(std::numeric_limits<double>::infinity()) == "null");
}

namespace {

/// A python3 that imports numpy, or "" after a warning that the NumPy check is skipped: the
/// first python3 on PATH may be another installation (pyenv, a virtualenv) than the one Debian's
/// python3-numpy serves.
std::string python_with_numpy() {
  for (const char* candidate : {"python3", "/usr/bin/python3"})
    if (std::system((std::string(candidate) + " -c 'import numpy' >/dev/null 2>&1").c_str()) == 0)
      return candidate;
  WARN("python3 with numpy is not available (Debian: python3-numpy): NumPy check skipped");
  return "";
}

/// Runs `python` on `script` (its text) with `argument`; fails the test on an error exit,
/// showing what Python wrote to stderr.
void run_python(const std::string& python, const npy_temp_dir& dir, const std::string& script,
                const std::string& argument) {
  const fs::path file = dir / "check.py";
  std::ofstream(file) << script;
  const std::string command = python + " '" + file.string() + "' '" + argument + "' 2>'" +
                              (dir / "stderr").string() + "'";
  const int status = std::system(command.c_str());
  INFO(read_text(dir / "stderr"));
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
}

/// 2x7x6 images -> conv3k3s2p1 (relu) -> pool2 -> dense4: a strided, padded convolution of
/// several channels, a map without parameters between two with them.
using npy_cnn = program<double, softmax_cross_entropy, relu, identity>;
npy_cnn random_cnn(std::uint64_t seed) {
  npy_cnn net({2, 7, 6}, parse_architecture("conv3k3s2p1-pool2-dense4"),
              {relu{}, identity{}, identity{}});
  random_source random(seed);
  randomize(net, random);
  return net;
}

}  // namespace

TEST_CASE("a CNN round-trips through export_npy and import_npy, its convolution in PyTorch's "
          "weight layout",
          "[npy][io]") {
  npy_temp_dir dir;
  const npy_cnn net = random_cnn(41);
  export_npy(dir.path, net);
  // The pooling layer (2) has no parameters and no files.
  CHECK(listing(dir.path) ==
        std::set<std::string>{"W1.npy", "b1.npy", "W3.npy", "b3.npy", "manifest.json"});
  npy_cnn loaded = random_cnn(42);
  import_npy(dir.path, loaded);
  CHECK(same_bits<double>(loaded.parameters(), net.parameters()));

  // W1[f, c, u, v] is filter f's weight on channel c at kernel row u, column v: entry
  // (c * 3 + u) * 3 + v of Wc's column f (layers/conv2d.hpp).
  const npy_array<double> w1 = read_npy<double>(dir / "W1.npy");
  REQUIRE(w1.shape == std::vector<Index>{3, 2, 3, 3});
  const auto wc = net.weights(0);
  REQUIRE(wc.rows() == 18);
  REQUIRE(wc.cols() == 3);
  for (Index f = 0; f < 3; ++f)
    for (Index entry = 0; entry < 18; ++entry) CHECK(w1.values(f, entry) == wc(entry, f));
  CHECK(read_npy<double>(dir / "b1.npy").shape == std::vector<Index>{3});
  CHECK(read_npy<double>(dir / "W3.npy").shape == std::vector<Index>{4, 6});

  const auto manifest = nlohmann::json::parse(read_text(dir / "manifest.json"));
  CHECK(manifest.at("input_image") == nlohmann::json::array({2, 7, 6}));
  CHECK(manifest.at("architecture") == "conv3k3s2p1-pool2-dense4");
  CHECK(manifest.at("layer_sizes") == nlohmann::json::array({84, 36, 6, 4}));
  const auto& layers = manifest.at("layers");
  REQUIRE(layers.size() == 3);
  CHECK(layers[0].at("map") == "conv3k3s2p1");
  CHECK(layers[0].at("input_image") == nlohmann::json::array({2, 7, 6}));
  CHECK(layers[0].at("output_image") == nlohmann::json::array({3, 4, 3}));
  CHECK(layers[0].at("weights").at("shape") == nlohmann::json::array({3, 2, 3, 3}));
  CHECK(layers[1].at("map") == "pool2");
  CHECK(layers[1].at("output_image") == nlohmann::json::array({3, 2, 1}));
  CHECK_FALSE(layers[1].contains("weights"));
  CHECK_FALSE(layers[1].contains("bias"));
  CHECK(layers[2].at("map") == "dense4");
  CHECK(layers[2].at("weights").at("file") == "W3.npy");

  SECTION("a weights file of the dense shape is refused, naming the expected one") {
    write_npy(dir / "W1.npy", Matrix<double>(wc.transpose()));
    npy_cnn other = random_cnn(43);
    const Vector<double> before = other.parameters();
    REQUIRE_DATA_ERROR(import_npy(dir.path, other),
                       Equals("import_npy: " + (dir / "W1.npy").string() +
                              ": expected shape (3, 2, 3, 3), found (3, 18)"));
    CHECK(same_bits<double>(other.parameters(), before));
  }
}

TEST_CASE("NumPy computes a convolution's pre-activation from the exported files",
          "[npy][io][numpy]") {
  const std::string python = python_with_numpy();
  if (python.empty()) return;
  npy_temp_dir dir;
  const npy_cnn net = random_cnn(44);
  export_npy(dir.path, net);
  random_source random(45);
  const Matrix<double> x = random_matrix<double>(random, 84, 5);
  write_npy(dir / "x.npy", x);
  // The definition of conv2d (cross-correlation) written out in loops, as PyTorch documents it,
  // on images x.T.reshape(B, C, H, W); the result back as columns of (F, OH, OW).
  run_python(python, dir, R"(import json, os, sys
import numpy as np
d = sys.argv[1]
layer = json.load(open(os.path.join(d, 'manifest.json')))['layers'][0]
W, b = np.load(os.path.join(d, 'W1.npy')), np.load(os.path.join(d, 'b1.npy'))
x = np.load(os.path.join(d, 'x.npy'))
C, H, Wd = layer['input_image']
F, OH, OW = layer['output_image']
stride, padding, K = 2, 1, W.shape[2]
images = np.pad(x.T.reshape(-1, C, H, Wd), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
out = np.zeros((images.shape[0], F, OH, OW))
for i in range(OH):
    for j in range(OW):
        window = images[:, :, i * stride:i * stride + K, j * stride:j * stride + K]
        out[:, :, i, j] = np.einsum('bcuv,fcuv->bf', window, W) + b
np.save(os.path.join(d, 'a1.npy'), np.ascontiguousarray(out.reshape(out.shape[0], -1).T))
)",
             dir.path.string());
  Matrix<double> a1;
  net.affine(0, x, a1);
  const npy_array<double> numpy_a1 = read_npy<double>(dir / "a1.npy");
  REQUIRE(numpy_a1.shape == std::vector<Index>{36, 5});
  CHECK((numpy_a1.values - a1).cwiseAbs().maxCoeff() <= 1e-12 * (1 + a1.cwiseAbs().maxCoeff()));
}

TEST_CASE("NumPy reads the exported files, and files NumPy writes are read here",
          "[npy][io][numpy]") {
  const std::string python = python_with_numpy();
  if (python.empty()) return;
  npy_temp_dir dir;
  auto net = make_mlp<float, relu>({6, 5, 3});
  random_source random(31);
  randomize(net, random);
  export_npy(dir.path, net);
  const Matrix<float> x = random_matrix<float>(random, 6, 4);
  write_npy(dir / "x.npy", x);
  const fs::path imported = dir / "imported";
  fs::create_directory(imported);

  run_python(python, dir, R"(import json, os, sys
import numpy as np
d = sys.argv[1]
manifest = json.load(open(os.path.join(d, 'manifest.json')))
report = {}
for layer in manifest['layers']:
    for part in ('weights', 'bias'):
        name = layer[part]['file']
        a = np.load(os.path.join(d, name))
        report[name] = {'shape': list(a.shape), 'dtype': str(a.dtype),
                        'first': a.flat[0].item(), 'last': a.flat[-1].item(),
                        'at_1': (a[1, 2] if a.ndim == 2 else a[1]).item()}
        # Doubled, in C order, for import_npy.
        np.save(os.path.join(d, 'imported', name), np.ascontiguousarray(2 * a))
W1, b1 = np.load(os.path.join(d, 'W1.npy')), np.load(os.path.join(d, 'b1.npy'))
x = np.load(os.path.join(d, 'x.npy'))
np.save(os.path.join(d, 'a1.npy'), np.ascontiguousarray(W1 @ x + b1[:, None]))
np.save(os.path.join(d, 'c.npy'), 0.5 * np.arange(12, dtype='<f8').reshape(3, 4))
np.save(os.path.join(d, 'f.npy'), np.asfortranarray(np.arange(6, dtype='<f4').reshape(2, 3)))
json.dump(report, open(os.path.join(d, 'report.json'), 'w'))
)",
             dir.path.string());

  const auto report = nlohmann::json::parse(read_text(dir / "report.json"));
  REQUIRE(report.size() == 4);
  for (Index k = 0; k < net.depth(); ++k) {
    const Matrix<float> w = net.weights(k);
    const auto& wr = report.at(detail::concat("W", k + 1, ".npy"));
    CHECK(wr.at("shape") == nlohmann::json::array({w.rows(), w.cols()}));
    CHECK(wr.at("dtype") == "float32");
    // flat[] is NumPy's row-major order whatever the file's.
    CHECK(wr.at("first").get<double>() == double(w(0, 0)));
    CHECK(wr.at("last").get<double>() == double(w(w.rows() - 1, w.cols() - 1)));
    CHECK(wr.at("at_1").get<double>() == double(w(1, 2)));
    const Vector<float> b = net.bias(k);
    const auto& br = report.at(detail::concat("b", k + 1, ".npy"));
    CHECK(br.at("shape") == nlohmann::json::array({b.size()}));
    CHECK(br.at("dtype") == "float32");
    CHECK(br.at("first").get<double>() == double(b(0)));
    CHECK(br.at("last").get<double>() == double(b(b.size() - 1)));
    CHECK(br.at("at_1").get<double>() == double(b(1)));
  }

  // NumPy's W @ x + b[:, None] is the program's pre-activation (NumPy sums in its own order).
  Matrix<float> a1;
  net.affine(0, x, a1);
  const npy_array<float> numpy_a1 = read_npy<float>(dir / "a1.npy");
  CHECK(numpy_a1.shape == std::vector<Index>{5, 4});
  CHECK((numpy_a1.values - a1).cwiseAbs().maxCoeff() <= 1e-5f * (1 + a1.cwiseAbs().maxCoeff()));

  // C-order and Fortran-order files written by NumPy.
  CHECK_THAT(read_text(dir / "c.npy"), Contains("'fortran_order': False"));
  const npy_array<double> c = read_npy<double>(dir / "c.npy");
  REQUIRE(c.shape == std::vector<Index>{3, 4});
  for (Index r = 0; r < 3; ++r)
    for (Index col = 0; col < 4; ++col) CHECK(c.values(r, col) == 0.5 * double(4 * r + col));
  CHECK_THAT(read_text(dir / "f.npy"), Contains("'fortran_order': True"));
  const npy_array<float> f = read_npy<float>(dir / "f.npy");
  REQUIRE(f.shape == std::vector<Index>{2, 3});
  for (Index r = 0; r < 2; ++r)
    for (Index col = 0; col < 3; ++col) CHECK(f.values(r, col) == float(3 * r + col));

  // Parameters NumPy wrote (C order, doubled) imported into a program.
  auto doubled = make_mlp<float, relu>({6, 5, 3});
  import_npy(imported, doubled);
  CHECK(doubled.parameters() == (2 * net.parameters()).eval());
}
