// Fuzz target: read_idx on arbitrary bytes, plain or gzip-compressed. A data_error is the
// expected answer to bad bytes; whatever it accepts must be self-consistent (the payload size
// is the product of the dimensions, each in 1..2^32-1).

#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "bilevel/io/idx.hpp"
#include "fuzz_target.hpp"

namespace {

/// read_idx reads from a path: each input is written to this process's own scratch file.
const std::filesystem::path& scratch_file() {
  static const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("bilevel-fuzz-idx-" + std::to_string(getpid()));
  return path;
}

std::vector<std::uint8_t> idx_file(const std::vector<std::uint32_t>& dims) {
  std::vector<std::uint8_t> bytes{0, 0, 0x08, std::uint8_t(dims.size())};
  std::size_t payload = 1;
  for (const std::uint32_t dim : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(std::uint8_t(dim >> shift));
    payload *= dim;
  }
  for (std::size_t i = 0; i < payload; ++i) bytes.push_back(std::uint8_t(i * 37));
  return bytes;
}

/// The gzip stream (not zlib's own format) of `plain`, as gzip-compressed MNIST files have.
std::vector<std::uint8_t> gzip(const std::vector<std::uint8_t>& plain) {
  z_stream stream{};
  if (deflateInit2(&stream, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    std::abort();
  std::vector<std::uint8_t> out(deflateBound(&stream, uLong(plain.size())) + 32);
  stream.next_in = const_cast<Bytef*>(plain.data());
  stream.avail_in = uInt(plain.size());
  stream.next_out = out.data();
  stream.avail_out = uInt(out.size());
  if (deflate(&stream, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(stream.total_out);
  deflateEnd(&stream);
  return out;
}

}  // namespace

std::vector<std::vector<std::uint8_t>> fuzz_seeds() {
  return {idx_file({12}), idx_file({3, 4, 4}), idx_file({2, 2, 3, 2}), gzip(idx_file({3, 4, 4})),
          gzip(idx_file({7}))};
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::FILE* file = std::fopen(scratch_file().c_str(), "wb");
  if (!file || std::fwrite(data, 1, size, file) != size || std::fclose(file) != 0) std::abort();
  try {
    const bilevel::idx_array array = bilevel::read_idx(scratch_file());
    std::size_t payload = 1;
    for (const std::int64_t dim : array.dims) {
      if (dim < 1 || dim > 0xFFFFFFFF) std::abort();
      payload *= std::size_t(dim);
    }
    if (array.dims.empty() || array.dims.size() > 4 || payload != array.data.size()) std::abort();
  } catch (const bilevel::data_error&) {
  }
  return 0;
}
