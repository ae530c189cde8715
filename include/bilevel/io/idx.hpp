#pragma once
/// \file
/// Reader and writer for the idx format of MNIST and Fashion-MNIST: a 4-byte magic number
/// (0, 0, type code, number of dimensions), one big-endian 32-bit size per dimension, then the
/// payload in row-major order. Only the unsigned-byte type (0x08) is supported, since that is
/// all those data sets use. Files may be plain or gzip-compressed: zlib's gzread passes plain
/// files through unchanged, so one code path reads both.
///
/// The reader treats every file as untrusted: it never allocates more than the bytes it has
/// actually read, refuses payloads above 2^32 bytes, and requires the payload to match the
/// header exactly, so a truncated download or a wrong file fails loudly instead of silently
/// training on garbage.

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "file.hpp"

namespace bilevel {

/// The contents of an unsigned-byte idx file: its dimensions and its row-major payload.
struct idx_array {
  std::vector<std::int64_t> dims;
  std::vector<std::uint8_t> data;
};

/// Images and labels of one split. Each column of `images` is one image flattened row by row
/// (pixel (r, c) at row r * cols + c), with values in [0, 1].
template <class S>
struct labelled_set {
  Matrix<S> images;
  std::vector<int> labels;
  Index rows = 0;
  Index cols = 0;
};

/// The training and test splits of an MNIST-style data set.
template <class S>
struct mnist_data {
  labelled_set<S> train;
  labelled_set<S> test;
};

namespace detail {

/// Largest payload read_idx accepts; far above MNIST (47 MB) yet bounded so that a forged
/// header cannot make the reader (or a caller converting to floating point) exhaust memory.
inline constexpr std::uint64_t idx_max_payload = std::uint64_t{1} << 32;
inline constexpr std::uint8_t idx_ubyte_type = 0x08;
inline constexpr std::size_t idx_max_dims = 4;
/// Bytes per gzread call: big enough to be fast, small enough to grow buffers gradually.
inline constexpr std::size_t idx_chunk = std::size_t{1} << 20;

struct gz_closer {
  void operator()(gzFile file) const noexcept { gzclose(file); }
};
using gz_handle = std::unique_ptr<gzFile_s, gz_closer>;

inline std::string hex32(std::uint32_t value) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out = "0x";
  for (int shift = 28; shift >= 0; shift -= 4) out += digits[(value >> shift) & 0xFu];
  return out;
}

inline std::uint32_t big_endian32(const std::uint8_t* bytes) {
  return (std::uint32_t{bytes[0]} << 24) | (std::uint32_t{bytes[1]} << 16) |
         (std::uint32_t{bytes[2]} << 8) | std::uint32_t{bytes[3]};
}

/// Reads until `count` bytes are in `out` or the input ends; returns the number read.
/// Throws data_error on a read or decompression error.
inline std::size_t gz_read_some(gzFile file, std::uint8_t* out, std::size_t count,
                                const std::string& path) {
  std::size_t total = 0;
  while (total < count) {
    const auto want = static_cast<unsigned>(std::min(count - total, idx_chunk));
    const int got = gzread(file, out + total, want);
    if (got < 0) {
      int code = Z_OK;
      const char* message = gzerror(file, &code);
      std::string_view text = message ? message : "unknown zlib error";
      const std::string zlib_prefix = path + ": ";  // zlib names the path itself; we already do
      if (text.starts_with(zlib_prefix)) text.remove_prefix(zlib_prefix.size());
      throw data_error(concat("read_idx: ", path, ": read error: ", text));
    }
    if (got == 0) break;
    total += static_cast<std::size_t>(got);
  }
  return total;
}

/// True if the input ended inside a gzip stream: a compressed file that was cut short.
inline bool gz_truncated(gzFile file) {
  int code = Z_OK;
  gzerror(file, &code);
  return code == Z_BUF_ERROR;
}

/// Appended to "found fewer bytes" messages, which would otherwise blame the idx header.
inline const char* gz_truncation_note(gzFile file) {
  return gz_truncated(file) ? " (gzip stream cut short)" : "";
}

}  // namespace detail

/// Reads an unsigned-byte idx file, plain or gzip-compressed. Throws data_error, naming the
/// path, if the file cannot be opened, has a bad header, or its payload size differs from the
/// product of its dimensions. `check_header(dims)` runs on the header's dimensions before any
/// of the payload is inflated: throw from it to refuse a file whose shape the caller cannot use
/// (a forged header then costs nothing).
template <class HeaderCheck>
idx_array read_idx(const std::filesystem::path& path, const HeaderCheck& check_header) {
  using detail::concat;
  const std::string path_text = path.string();
  const std::string where = concat("read_idx: ", path_text, ": ");

  detail::require_regular_file(path, concat(where, "cannot open: "));
  errno = 0;
  detail::gz_handle file(gzopen(path_text.c_str(), "rb"));
  if (!file) {
    const int code = errno;
    throw data_error(concat(
        where, "cannot open: ", code != 0 ? std::generic_category().message(code) : "zlib error"));
  }
  gzbuffer(file.get(), 1u << 17);  // larger than zlib's 8 KiB default: fewer system calls

  std::array<std::uint8_t, 4> magic{};
  const std::size_t magic_read = detail::gz_read_some(file.get(), magic.data(), 4, path_text);
  if (magic_read != 4) {
    throw data_error(concat(where, "expected a 4-byte magic number, found ", magic_read, " bytes",
                            detail::gz_truncation_note(file.get())));
  }
  const std::uint32_t magic_value = detail::big_endian32(magic.data());
  const std::size_t ndims = magic[3];
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != detail::idx_ubyte_type || ndims < 1 ||
      ndims > detail::idx_max_dims) {
    throw data_error(
        concat(where, "bad magic number: expected 0x000008NN (unsigned bytes, NN = 1 to ",
               detail::idx_max_dims, " dimensions), got ", detail::hex32(magic_value)));
  }

  std::array<std::uint8_t, 4 * detail::idx_max_dims> header{};
  const std::size_t header_read =
      detail::gz_read_some(file.get(), header.data(), 4 * ndims, path_text);
  if (header_read != 4 * ndims) {
    throw data_error(concat(where, "expected ", 4 * ndims, " header bytes for ", ndims,
                            " dimensions, found ", header_read,
                            detail::gz_truncation_note(file.get())));
  }
  idx_array result;
  result.dims.reserve(ndims);
  std::uint64_t expected = 1;
  for (std::size_t d = 0; d < ndims; ++d) {
    const std::uint32_t size = detail::big_endian32(header.data() + 4 * d);
    if (size == 0) {
      throw data_error(concat(where, "dimension ", d, " must be > 0, got 0"));
    }
    // expected <= 2^32 and size < 2^32 before this product, so it cannot overflow 64 bits.
    expected *= size;
    if (expected > detail::idx_max_payload) {
      std::string sizes;  // all of them: the one that overflowed need not be the wrong one
      for (std::size_t e = 0; e < ndims; ++e)
        sizes += concat(e == 0 ? "" : " x ", detail::big_endian32(header.data() + 4 * e));
      throw data_error(concat(where, "payload must be at most ", detail::idx_max_payload,
                              " bytes, the header asks for ", sizes));
    }
    result.dims.push_back(static_cast<std::int64_t>(size));
  }

  check_header(std::as_const(result.dims));

  // Grow with the data actually read rather than trusting the header for the allocation.
  const auto expected_bytes = static_cast<std::size_t>(expected);
  result.data.reserve(std::min(expected_bytes, detail::idx_chunk));
  std::size_t have = 0;
  while (have < expected_bytes) {
    const std::size_t want = std::min(expected_bytes - have, detail::idx_chunk);
    result.data.resize(have + want);
    const std::size_t got =
        detail::gz_read_some(file.get(), result.data.data() + have, want, path_text);
    have += got;
    if (got < want) break;
  }
  if (have != expected_bytes) {
    throw data_error(concat(where, "expected ", expected_bytes,
                            " payload bytes after the header, found ", have,
                            detail::gz_truncation_note(file.get())));
  }

  // Trailing bytes: one chunk past the payload is enough to refuse the file, and bounds what
  // the decompressor produces (a small file can inflate to gigabytes).
  std::vector<std::uint8_t> scratch(std::size_t{1} << 16);
  const std::size_t extra =
      detail::gz_read_some(file.get(), scratch.data(), scratch.size(), path_text);
  if (extra > 0) {
    throw data_error(concat(where, "expected ", expected_bytes,
                            " payload bytes after the header, found ",
                            extra == scratch.size() ? "at least " : "",
                            static_cast<std::uint64_t>(expected_bytes) + extra));
  }
  if (detail::gz_truncated(file.get())) {
    throw data_error(concat(where, "gzip stream cut short after the payload"));
  }
  return result;
}

/// Reads an unsigned-byte idx file of any shape (see above).
inline idx_array read_idx(const std::filesystem::path& path) {
  return read_idx(path, [](const std::vector<std::int64_t>&) {});
}

/// Writes `data` as a plain unsigned-byte idx file of shape `dims`, atomically (io/file.hpp).
/// Throws shape_error if `dims` does not describe exactly `data.size()` bytes, data_error if
/// the file cannot be written.
inline void write_idx(const std::filesystem::path& path, const std::vector<std::int64_t>& dims,
                      const std::vector<std::uint8_t>& data) {
  using detail::concat;
  if (dims.empty() || dims.size() > detail::idx_max_dims) {
    throw shape_error(concat("write_idx: number of dimensions must be 1 to ", detail::idx_max_dims,
                             ", got ", dims.size()));
  }
  std::uint64_t product = 1;
  for (std::size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] <= 0 || dims[d] > std::int64_t{0xFFFFFFFF}) {
      throw shape_error(
          concat("write_idx: dimension ", d, " must be in 1..4294967295, got ", dims[d]));
    }
    product *= static_cast<std::uint64_t>(dims[d]);
    if (product > detail::idx_max_payload) {
      throw shape_error(concat("write_idx: payload must be at most ", detail::idx_max_payload,
                               " bytes, dimensions ask for more"));
    }
  }
  if (product != data.size()) {
    throw shape_error(
        concat("write_idx: dimensions hold ", product, " bytes, data has ", data.size()));
  }

  std::vector<std::uint8_t> bytes{0, 0, detail::idx_ubyte_type, std::uint8_t(dims.size())};
  for (const std::int64_t dim : dims) {
    const auto size = static_cast<std::uint32_t>(dim);
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(std::uint8_t(size >> shift));
  }
  bytes.insert(bytes.end(), data.begin(), data.end());
  write_file_atomically(path, bytes, "write_idx");
}

/// Reads a label file (N) and an image file (N x rows x cols) into a labelled_set, scaling
/// pixels by 1/255. The labels come first, and the image header is checked before its payload
/// is inflated: the same count N, and rows x cols = `pixels` unless that is 0. Throws
/// data_error naming the file for wrong ranks, counts or image sizes, and for labels >=
/// `classes` (unless that is 0).
template <Scalar S>
labelled_set<S> load_idx_pair(const std::filesystem::path& images,
                              const std::filesystem::path& labels, Index pixels = 0,
                              Index classes = 0) {
  using detail::concat;
  const idx_array label_file = read_idx(labels, [&](const std::vector<std::int64_t>& dims) {
    if (dims.size() != 1)
      throw data_error(concat("load_idx_pair: ", labels.string(),
                              ": labels must have 1 dimension (N), got ", dims.size()));
  });
  const Index count = label_file.dims[0];
  if (classes > 0) {
    const auto bad = std::find_if(label_file.data.begin(), label_file.data.end(),
                                  [classes](std::uint8_t label) { return label >= classes; });
    if (bad != label_file.data.end())
      throw data_error(concat("load_idx_pair: ", labels.string(), ": label ",
                              bad - label_file.data.begin(), " is ", int(*bad),
                              ", expected 0 to ", classes - 1));
  }
  const idx_array image_file = read_idx(images, [&](const std::vector<std::int64_t>& dims) {
    if (dims.size() != 3)
      throw data_error(concat("load_idx_pair: ", images.string(),
                              ": images must have 3 dimensions (N x rows x cols), got ",
                              dims.size()));
    if (dims[0] != count)
      throw data_error(concat("load_idx_pair: ", images.string(), " holds ", dims[0],
                              " images but ", labels.string(), " holds ", count, " labels"));
    if (pixels > 0 && dims[1] * dims[2] != pixels)
      throw data_error(concat("load_idx_pair: ", images.string(), ": images are ", dims[1], "x",
                              dims[2], " (", dims[1] * dims[2], " pixels), expected ", pixels,
                              " pixels"));
  });

  labelled_set<S> set;
  set.rows = image_file.dims[1];
  set.cols = image_file.dims[2];
  // The idx payload is image after image, each row-major: exactly the column-major layout of
  // a (rows*cols) x N matrix whose columns are the flattened images.
  set.images.resize(set.rows * set.cols, count);
  S* values = set.images.data();
  for (std::size_t i = 0; i < image_file.data.size(); ++i)
    values[i] = S(image_file.data[i]) / S(255);
  set.labels.assign(label_file.data.begin(), label_file.data.end());
  return set;
}

/// The four idx files of MNIST and Fashion-MNIST: training images and labels, test images and
/// labels. load_mnist reads each plain or with a .gz suffix.
inline constexpr std::array<std::string_view, 4> mnist_file_names = {
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte"};

/// The two splits of an MNIST-style data set.
enum class mnist_split { train, test };

/// Loads one split of MNIST or Fashion-MNIST from `dir`, which must hold that split's
/// mnist_file_names, each plain or with a .gz suffix (the plain file wins if both exist). Labels
/// must be 0 to 9; images must have `pixels` pixels unless that is 0 (checked before their
/// payload is read).
template <Scalar S>
labelled_set<S> load_mnist_split(const std::filesystem::path& dir, mnist_split split,
                                 Index pixels = 0) {
  using detail::concat;
  std::error_code status_error;
  const auto status = std::filesystem::status(dir, status_error);
  if (status_error)
    throw data_error(concat("load_mnist: data directory ", dir.string(), ": ",
                            status_error.message()));
  if (!std::filesystem::is_directory(status))
    throw data_error(concat("load_mnist: data directory ", dir.string(), ": not a directory"));
  const auto find = [&dir](std::string_view name) {
    std::filesystem::path plain = dir / name;
    std::filesystem::path compressed = plain;
    compressed += ".gz";
    for (const auto& candidate : {plain, compressed}) {
      std::error_code error;
      const auto status = std::filesystem::symlink_status(candidate, error);
      if (error == std::errc::no_such_file_or_directory) continue;
      if (error)  // e.g. no permission to look into the directory
        throw data_error(concat("load_mnist: ", candidate.string(), ": ", error.message()));
      if (std::filesystem::exists(status)) return candidate;  // read_idx says if it is unusable
    }
    throw data_error(
        concat("load_mnist: missing ", plain.string(), " (or ", compressed.string(), ")"));
  };
  constexpr Index classes = 10;
  const std::size_t first = split == mnist_split::train ? 0 : 2;
  return load_idx_pair<S>(find(mnist_file_names[first]), find(mnist_file_names[first + 1]),
                          pixels, classes);
}

/// Loads both splits of MNIST or Fashion-MNIST from `dir` (load_mnist_split); their images must
/// have the same size.
template <Scalar S>
mnist_data<S> load_mnist(const std::filesystem::path& dir, Index pixels = 0) {
  mnist_data<S> data;
  data.train = load_mnist_split<S>(dir, mnist_split::train, pixels);
  data.test = load_mnist_split<S>(dir, mnist_split::test, pixels);
  if (data.train.rows != data.test.rows || data.train.cols != data.test.cols) {
    throw data_error(detail::concat("load_mnist: ", dir.string(), ": training images are ",
                                    data.train.rows, "x", data.train.cols,
                                    " but test images are ", data.test.rows, "x",
                                    data.test.cols));
  }
  return data;
}

}  // namespace bilevel
