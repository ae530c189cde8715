#pragma once
/// \file
/// NumPy .npy files: one array per file, so that a trained program can be inspected, plotted or
/// run in NumPy, and parameters trained elsewhere can be brought in.
///
///   export_npy("model", net);   // model/W1.npy .. WL.npy, b1.npy .. bL.npy, manifest.json
///   import_npy("model", net);   // the same files back into a program of the same maps
///
/// In NumPy, with samples as columns, `W @ x + b[:, None]` is a dense layer's pre-activation
/// a_k; a convolution's W has PyTorch's Conv2d layout (filters, channels, kernel, kernel).
///
/// Format (NPY 1.0, https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html):
///   "\x93NUMPY" | major 1, minor 0 | u16 header length | header | data
/// The header is the text of a Python dict, e.g.
///   {'descr': '<f4', 'fortran_order': True, 'shape': (256, 784), }
/// padded with spaces and a final '\n' so that the data starts at a multiple of 64 bytes. Version
/// 2.0 differs only in a u32 header length. All integers and data are little-endian.
///
/// The writer stores matrices with 'fortran_order': True, which is Eigen's column-major order,
/// and vectors with the 1-D shape (n,). The reader takes float32 and float64 ('<f4', '<f8', and
/// '|' or '=' in place of '<' where that means little-endian here), either order, any shape of
/// at least one dimension, versions 1.0 and 2.0. It treats every file as untrusted: anything else
/// (bad magic, truncated preamble, header or data, other types, big-endian data, 0-D arrays,
/// trailing bytes, a header that does not parse, sizes that overflow) is a data_error naming the
/// file, what was expected and what was found; it never reads past the file's bytes and
/// allocates only for data the file actually holds.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iomanip>
#include <limits>
#include <locale>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../core/finite.hpp"
#include "../core/types.hpp"
#include "../program.hpp"
#include "file.hpp"

namespace bilevel {

/// An array read from an .npy file: its shape as stored and its values, a 1-D array of n entries
/// as an n x 1 matrix and an array of shape (n0, n1, ...) as the n0 x (n1 * ...) matrix of
/// NumPy's a.reshape(n0, -1) (the trailing indices flattened in C order, the last fastest).
template <Scalar S>
struct npy_array {
  std::vector<Index> shape;
  Matrix<S> values;
};

inline constexpr std::string_view npy_magic = "\x93NUMPY";
/// The writer pads the preamble (magic, version, length, header) to a multiple of this, as NumPy
/// does, so that the data is aligned for memory mapping.
inline constexpr std::size_t npy_alignment = 64;

namespace detail {

template <class S>
constexpr bool npy_scalar = std::is_same_v<S, float> || std::is_same_v<S, double>;

/// "<f4" / "<f8": the descr the writer gives S.
template <class S>
constexpr std::string_view npy_descr() {
  return sizeof(S) == 4 ? "<f4" : "<f8";
}

template <class F>
using npy_bits = std::conditional_t<sizeof(F) == 4, std::uint32_t, std::uint64_t>;

/// Little-endian loads and stores whatever the host (a shift loop the compiler turns into a
/// plain move on little-endian machines).
template <class F>
F load_little(const std::uint8_t* bytes) {
  npy_bits<F> bits = 0;
  for (std::size_t b = 0; b < sizeof(F); ++b) bits |= npy_bits<F>(bytes[b]) << (8 * b);
  return std::bit_cast<F>(bits);
}
template <class F>
void store_little(F value, std::uint8_t* bytes) {
  const auto bits = std::bit_cast<npy_bits<F>>(value);
  for (std::size_t b = 0; b < sizeof(F); ++b) bytes[b] = std::uint8_t(bits >> (8 * b));
}

/// Header text fit for an error message: printable ASCII kept, other bytes as \\xNN, cut after
/// 120 characters (a forged header may be megabytes of anything).
inline std::string npy_quote(std::string_view text) {
  constexpr std::size_t shown = 120;
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < text.size() && i < shown; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += char(c);
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += "\\x";
      out += digits[c >> 4];
      out += digits[c & 0xF];
    }
  }
  if (text.size() > shown) out += concat("... (", text.size(), " bytes)");
  return out;
}

inline std::string npy_shape_text(const std::vector<Index>& shape) {
  std::string text = "(";
  for (std::size_t d = 0; d < shape.size(); ++d)
    text += concat(d > 0 ? ", " : "", shape[d]);
  return text + (shape.size() == 1 ? ",)" : ")");
}

/// What the header dict holds.
struct npy_header {
  std::string descr;
  bool fortran_order = false;
  std::vector<Index> shape;
};

/// Parses the header dict: a Python literal with exactly the keys 'descr' (a string),
/// 'fortran_order' (True or False) and 'shape' (a tuple of non-negative integers), in any order,
/// with optional whitespace and trailing commas, followed by whitespace only. `where` starts
/// every message.
class npy_header_parser {
 public:
  npy_header_parser(std::string_view text, std::string where)
      : text_(text), where_(std::move(where)) {}

  npy_header parse() {
    npy_header header;
    bool seen_descr = false, seen_order = false, seen_shape = false;
    skip_space();
    expect('{', "'{' opening the header dict");
    skip_space();
    while (!at('}')) {
      const std::size_t key_start = position_;
      const std::string key = string_literal("a quoted key or '}'");
      skip_space();
      expect(':', "':' after a key");
      skip_space();
      if (key == "descr" && !seen_descr) {
        header.descr = string_literal("a quoted descr such as '<f4'");
        seen_descr = true;
      } else if (key == "fortran_order" && !seen_order) {
        header.fortran_order = boolean();
        seen_order = true;
      } else if (key == "shape" && !seen_shape) {
        header.shape = tuple();
        seen_shape = true;
      } else {
        position_ = key_start;  // point at the key, not its value
        fail(concat("the keys 'descr', 'fortran_order' and 'shape' once each, found key '",
                    npy_quote(key), "'", key == "descr" || key == "fortran_order" || key == "shape"
                                             ? " twice"
                                             : ""));
      }
      skip_space();
      if (!at(',')) break;
      ++position_;
      skip_space();
    }
    expect('}', "',' or '}' after a value");
    skip_space();
    if (position_ != text_.size()) fail("nothing but spaces after the dict's '}'");
    if (!seen_descr || !seen_order || !seen_shape)
      fail(concat("the keys 'descr', 'fortran_order' and 'shape', found no '",
                  !seen_descr ? "descr" : !seen_order ? "fortran_order" : "shape", "'"));
    return header;
  }

 private:
  [[noreturn]] void fail(const std::string& expected) const {
    throw data_error(concat(where_, "cannot parse the header ", npy_quote(text_), ": expected ",
                            expected, " at character ", position_));
  }
  bool at(char c) const { return position_ < text_.size() && text_[position_] == c; }
  void skip_space() {
    while (position_ < text_.size() &&
           (text_[position_] == ' ' || text_[position_] == '\t' || text_[position_] == '\n' ||
            text_[position_] == '\r'))
      ++position_;
  }
  void expect(char c, std::string_view what) {
    if (!at(c)) fail(std::string(what));
    ++position_;
  }
  /// 'text' or "text" without escapes (no valid header needs them).
  std::string string_literal(std::string_view what) {
    if (!at('\'') && !at('"')) fail(std::string(what));
    const char quote = text_[position_++];
    const std::size_t end = text_.find(quote, position_);
    if (end == std::string_view::npos) fail(concat("a closing ", quote));
    std::string value(text_.substr(position_, end - position_));
    if (value.find('\\') != std::string::npos) fail("a string without backslashes");
    position_ = end + 1;
    return value;
  }
  bool boolean() {
    for (const auto& [word, value] : {std::pair{std::string_view("True"), true},
                                      std::pair{std::string_view("False"), false}}) {
      if (text_.substr(position_).starts_with(word)) {
        position_ += word.size();
        return value;
      }
    }
    fail("True or False for 'fortran_order'");
  }
  Index integer() {
    if (position_ >= text_.size() || text_[position_] < '0' || text_[position_] > '9')
      fail("a non-negative integer in 'shape'");
    Index value = 0;
    while (position_ < text_.size() && text_[position_] >= '0' && text_[position_] <= '9') {
      if (__builtin_mul_overflow(value, Index(10), &value) ||
          __builtin_add_overflow(value, Index(text_[position_] - '0'), &value))
        fail(concat("a dimension of at most ", std::numeric_limits<Index>::max()));
      ++position_;
    }
    return value;
  }
  /// (), (n,) or (n, m, ...) with an optional trailing comma; (n) is not a tuple in Python.
  std::vector<Index> tuple() {
    std::vector<Index> values;
    expect('(', "'(' opening the shape tuple");
    skip_space();
    bool comma = false;
    while (!at(')')) {
      values.push_back(integer());
      skip_space();
      comma = at(',');
      if (!comma) break;
      ++position_;
      skip_space();
    }
    if (values.size() == 1 && !comma) fail("',' after the only dimension of a 1-D shape");
    expect(')', "',' or ')' in the shape tuple");
    return values;
  }

  std::string_view text_;
  std::string where_;
  std::size_t position_ = 0;
};

/// Fills `values` (shape[0] x the product of the rest, as npy_array holds them) from little-endian
/// F at `data` in NPY order: the first index fastest when `fortran`, the last otherwise.
template <class F, Scalar S>
void npy_convert(const std::uint8_t* data, bool fortran, const std::vector<Index>& shape,
                 Matrix<S>& values) {
  const Index rows = values.rows(), cols = values.cols();
  const auto load = [&](Index i) { return static_cast<S>(load_little<F>(data + i * sizeof(F))); };
  if (!fortran) {  // entry (r, c) at r * cols + c
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < cols; ++c) values(r, c) = load(r * cols + c);
  } else if (shape.size() <= 2) {  // Eigen's own order
    for (Index i = 0; i < rows * cols; ++i) values.data()[i] = load(i);
  } else {
    // File entry i has indices (i0, i1, ..., in) with i0 fastest; its column is the C-order
    // position of (i1, ..., in), to which index d >= 1 contributes i_d times the product of
    // the extents after d.
    std::vector<Index> stride(shape.size(), 1);
    for (std::size_t d = shape.size() - 1; d > 1; --d) stride[d - 1] = stride[d] * shape[d];
    std::vector<Index> index(shape.size(), 0);
    for (Index i = 0; i < rows * cols; ++i) {
      Index column = 0;
      for (std::size_t d = 1; d < shape.size(); ++d) column += index[d] * stride[d];
      values(index[0], column) = load(i);
      for (std::size_t d = 0; d < shape.size() && ++index[d] == shape[d]; ++d) index[d] = 0;
    }
  }
}

/// The bytes of an .npy file of `shape` whose data are the entries of `values` in column-major
/// order, declared as Fortran order when `fortran` and as C order otherwise: a matrix as itself
/// (its shape, Fortran), a vector as (n,), and a convolution's Wc, whose columns are its filters'
/// (c, u, v) weights, as the C-order (F, C, K, K).
template <class S>
std::vector<std::uint8_t> npy_file_bytes(const Eigen::Ref<const Matrix<S>>& values,
                                         const std::vector<Index>& shape, bool fortran) {
  static_assert(npy_scalar<S>, "bilevel::npy: only float and double arrays can be written");
  Index count = 1;
  for (const Index extent : shape) count *= extent;
  if (count != values.size())
    throw shape_error(concat("npy_file_bytes: expected ", count, " values for shape ",
                             npy_shape_text(shape), ", found ", values.size()));
  std::string header = concat("{'descr': '", npy_descr<S>(), "', 'fortran_order': ",
                              fortran ? "True" : "False", ", 'shape': ", npy_shape_text(shape),
                              ", }");
  constexpr std::size_t preamble = npy_magic.size() + 2 + 2;  // magic, version, u16 length
  // Spaces, then '\n', so that the data starts at a multiple of npy_alignment.
  header.append((npy_alignment - (preamble + header.size() + 1) % npy_alignment) % npy_alignment,
                ' ');
  header += '\n';
  std::vector<std::uint8_t> bytes(npy_magic.begin(), npy_magic.end());
  bytes.push_back(1);
  bytes.push_back(0);
  bytes.push_back(std::uint8_t(header.size() & 0xFF));
  bytes.push_back(std::uint8_t(header.size() >> 8));
  bytes.insert(bytes.end(), header.begin(), header.end());
  const std::size_t start = bytes.size();
  bytes.resize(start + std::size_t(values.size()) * sizeof(S));
  std::uint8_t* out = bytes.data() + start;
  // Column by column: a Ref may have an outer stride (a block of a larger matrix).
  for (Index c = 0; c < values.cols(); ++c)
    for (Index r = 0; r < values.rows(); ++r, out += sizeof(S)) store_little(values(r, c), out);
  return bytes;
}

/// A matrix's shape and order: (rows, cols) in Fortran order, or (n,) for a vector type.
template <class Derived>
std::pair<std::vector<Index>, bool> npy_natural_shape(const Eigen::DenseBase<Derived>& array) {
  if constexpr (Derived::ColsAtCompileTime == 1)
    return {{array.size()}, false};
  else
    return {{array.rows(), array.cols()}, true};
}

template <class Derived>
void write_npy_as(const std::filesystem::path& path, const Eigen::DenseBase<Derived>& array,
                  std::string_view function) {
  using S = typename Derived::Scalar;
  static_assert(npy_scalar<S>, "bilevel::write_npy: only float and double arrays can be written");
  // A Ref binds to maps and blocks without copying; other expressions are evaluated once.
  const Eigen::Ref<const Matrix<S>> values(array.derived());
  const auto [shape, fortran] = npy_natural_shape(array);
  write_file_atomically(path, npy_file_bytes<S>(values, shape, fortran), function);
}

/// "<path>: expected ..., found ..." for a directory argument that is not an existing directory.
inline void require_directory(const std::filesystem::path& directory, std::string_view function) {
  std::error_code error;
  const auto status = std::filesystem::status(directory, error);
  if (!error && std::filesystem::is_directory(status)) return;
  const bool missing = status.type() == std::filesystem::file_type::not_found ||
                       error == std::errc::no_such_file_or_directory;
  throw data_error(concat(function, ": ", directory.string(),
                          ": expected an existing directory, found ",
                          missing ? std::string("nothing there")
                          : error ? error.message()
                                  : std::string("a file that is not a directory")));
}

/// A string as a JSON string literal.
inline std::string json_string(std::string_view text) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out = "\"";
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      out += "\\u00";
      out += digits[u >> 4];
      out += digits[u & 0xF];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

/// A number as JSON: 17 significant digits, which read back as the same double; null for NaN
/// and Inf, which JSON lacks.
inline std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  std::ostringstream out;
  out.imbue(std::locale::classic());
  out << std::setprecision(17) << value;
  return out.str();
}

inline std::string npy_weights_name(Index layer) { return concat("W", layer, ".npy"); }
inline std::string npy_bias_name(Index layer) { return concat("b", layer, ".npy"); }

}  // namespace detail

/// The .npy bytes of `array`: a matrix as a 2-D Fortran-order array of its shape, a vector (an
/// Eigen type with one column at compile time: Vector, VectorMap, col()) as the 1-D shape (n,).
/// Only float and double arrays.
template <class Derived>
std::vector<std::uint8_t> npy_bytes(const Eigen::DenseBase<Derived>& array) {
  using S = typename Derived::Scalar;
  static_assert(detail::npy_scalar<S>, "bilevel::npy_bytes: only float and double arrays");
  const Eigen::Ref<const Matrix<S>> values(array.derived());
  const auto [shape, fortran] = detail::npy_natural_shape(array);
  return detail::npy_file_bytes<S>(values, shape, fortran);
}

/// Writes `array` to `path` as .npy (see npy_bytes), atomically (io/file.hpp). Throws data_error
/// naming write_npy and the path if the file cannot be written.
template <class Derived>
void write_npy(const std::filesystem::path& path, const Eigen::DenseBase<Derived>& array) {
  detail::write_npy_as(path, array, "write_npy");
}

/// Parses .npy file bytes into S (a float64 file read as float is rounded to nearest; values
/// beyond float's range become Inf). `context` ("read_npy: <path>") starts every message.
template <Scalar S>
npy_array<S> parse_npy(std::span<const std::uint8_t> bytes, std::string_view context) {
  using detail::concat;
  const std::string where = concat(context, ": ");
  const std::size_t magic_size = npy_magic.size();
  if (bytes.size() < magic_size ||
      std::string_view(reinterpret_cast<const char*>(bytes.data()), magic_size) != npy_magic) {
    const std::size_t shown = std::min(bytes.size(), magic_size);
    throw data_error(concat(
        where, "not a NumPy .npy file: expected the magic \\x93NUMPY, found ",
        shown == 0 ? std::string("an empty file")
                   : concat('"', detail::npy_quote(std::string_view(
                                     reinterpret_cast<const char*>(bytes.data()), shown)),
                            '"'),
        // np.savez writes zip archives of .npy files, an easy mix-up.
        bytes.size() >= 4 && bytes[0] == 'P' && bytes[1] == 'K' && bytes[2] == 3 && bytes[3] == 4
            ? " (a zip archive: an .npz file holds .npy files, unpack it first)"
            : ""));
  }
  if (bytes.size() < magic_size + 2)
    throw data_error(concat(where, "truncated preamble: expected 2 version bytes after the ",
                            "magic, found ", bytes.size() - magic_size));
  const unsigned major = bytes[magic_size], minor = bytes[magic_size + 1];
  if ((major != 1 && major != 2) || minor != 0)
    throw data_error(concat(where, "unsupported .npy format version ", major, ".", minor,
                            ": expected 1.0 or 2.0"));
  const std::size_t length_size = major == 1 ? 2 : 4;
  const std::size_t preamble = magic_size + 2 + length_size;
  if (bytes.size() < preamble)
    throw data_error(concat(where, "truncated preamble: expected ", length_size,
                            " bytes of header length (version ", major, ".0), found ",
                            bytes.size() - magic_size - 2));
  std::size_t header_length = 0;
  for (std::size_t b = 0; b < length_size; ++b)
    header_length |= std::size_t(bytes[magic_size + 2 + b]) << (8 * b);
  if (header_length > bytes.size() - preamble)
    throw data_error(concat(where, "truncated header: expected ", header_length,
                            " header bytes after the ", preamble, "-byte preamble, found ",
                            bytes.size() - preamble));
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + preamble,
                              header_length);
  const detail::npy_header header = detail::npy_header_parser(text, where).parse();

  // Only what we can read as IEEE little-endian float32 and float64.
  const std::string_view descr = header.descr;
  const bool little_order =
      descr.starts_with('<') || descr.starts_with('|') ||
      (descr.starts_with('=') && std::endian::native == std::endian::little);
  std::size_t item = 0;
  if (little_order && descr.substr(1) == "f4") item = 4;
  if (little_order && descr.substr(1) == "f8") item = 8;
  if (item == 0)
    throw data_error(concat(where, "unsupported descr '", detail::npy_quote(descr),
                            "': expected '<f4' or '<f8' (little-endian float32 or float64)",
                            descr.starts_with('>') ? ", found big-endian data" : ""));
  if (header.shape.empty())
    throw data_error(concat(where, "unsupported shape (): expected at least 1 dimension, found 0"));

  // The columns (all extents but the first) on their own too: (0, huge, huge) holds no data
  // but would make a matrix of too many columns.
  Index columns = 1, count = 0, data_size = 0;
  bool overflow = false;
  for (std::size_t d = 1; d < header.shape.size(); ++d)
    overflow = overflow || __builtin_mul_overflow(columns, header.shape[d], &columns);
  if (overflow || __builtin_mul_overflow(header.shape[0], columns, &count) ||
      __builtin_mul_overflow(count, Index(item), &data_size))
    throw data_error(concat(where, "shape ", detail::npy_shape_text(header.shape), " of '",
                            descr, "' overflows: more than ",
                            std::numeric_limits<Index>::max(), " bytes"));
  const std::size_t found = bytes.size() - preamble - header_length;
  if (std::size_t(data_size) != found)
    throw data_error(concat(where, "shape ", detail::npy_shape_text(header.shape), " of '", descr,
                            "' needs ", data_size, " bytes of data after the header, found ",
                            found, found < std::size_t(data_size) ? " (truncated)"
                                                                  : " (extra trailing bytes)"));

  npy_array<S> result;
  result.shape = header.shape;
  result.values.resize(header.shape[0], columns);
  const std::uint8_t* data = bytes.data() + preamble + header_length;
  if (item == 4)
    detail::npy_convert<float>(data, header.fortran_order, header.shape, result.values);
  else
    detail::npy_convert<double>(data, header.fortran_order, header.shape, result.values);
  return result;
}

/// Reads a float32 or float64 .npy file into S (see parse_npy and npy_array). Throws
/// data_error naming read_npy and the path for a missing or non-regular file and anything the
/// format does not allow.
template <Scalar S>
npy_array<S> read_npy(const std::filesystem::path& path) {
  const std::vector<std::uint8_t> bytes = read_file(path, "read_npy");
  return parse_npy<S>(bytes, "read_npy: " + path.string());
}

namespace detail {

/// How layer k's weights are stored: a dense W as itself, (n_k, n_{k-1}) in Fortran order; a
/// convolution's Wc (its columns the filters' (c, u, v) weights, layers/conv2d.hpp) as PyTorch's
/// Conv2d weight (F, C, K, K) in C order, whose reshape(F, -1) is Wc^T. Maps without parameters
/// (pooling) have no files.
struct npy_weight_layout {
  std::vector<Index> shape;
  bool fortran = true;  ///< W as stored; otherwise the file holds W^T's rows
};

template <class Program>
npy_weight_layout npy_weights_layout(const Program& net, Index k) {
  const auto& layer = net.layer(k);
  if (const auto* conv = std::get_if<conv_spec>(&net.maps()[std::size_t(k)])) {
    const Index area = conv->kernel * conv->kernel;
    return {{layer.weight_cols(), layer.weight_rows() / area, conv->kernel, conv->kernel}, false};
  }
  return {{layer.weight_rows(), layer.weight_cols()}, true};
}

template <class Program>
bool npy_has_parameters(const Program& net, Index k) {
  return net.layer(k).bias_size() > 0;
}

inline std::string json_array(const std::vector<Index>& values) {
  std::string text = "[";
  for (std::size_t i = 0; i < values.size(); ++i) text += concat(i > 0 ? ", " : "", values[i]);
  return text + "]";
}

inline std::string json_image(const image_shape& image) {
  return json_array({image.channels, image.height, image.width});
}

}  // namespace detail

/// Writes the parameters of `net` into the existing `directory`, for each layer k with
/// parameters: Wk.npy (a dense layer's weights of shape (n_k, n_{k-1}) in Fortran order, a
/// convolution's of PyTorch's shape (filters, channels, kernel, kernel)) and bk.npy (shape (n_k,)
/// or (filters,)); pooling layers have no files. Then manifest.json: the input image, the
/// architecture (layers/architecture.hpp's grammar), sizes, loss, and per layer its map, images,
/// activation, files and shapes, the dtype. Each file is written atomically and the manifest
/// last. In NumPy, with x holding samples as columns, W @ x + b[:, None] is a dense layer's
/// pre-activation, and a convolution's is PyTorch's conv2d of x.T.reshape(B, C, H, W) (images as
/// in layers/image.hpp). Throws data_error naming export_npy when the directory does not exist or
/// a file cannot be written.
template <Scalar S, class Loss, class... Pairs>
void export_npy(const std::filesystem::path& directory, const program<S, Loss, Pairs...>& net) {
  static_assert(detail::npy_scalar<S>, "bilevel::export_npy: only float and double programs");
  using detail::concat;
  using detail::json_string;
  constexpr std::string_view function = "export_npy";
  detail::require_directory(directory, function);

  const char* dtype = sizeof(S) == 4 ? "float32" : "float64";
  std::ostringstream json;
  json.imbue(std::locale::classic());
  json << "{\n  \"format\": \"bilevel npy export\",\n  \"version\": 1,\n";
  json << "  \"dtype\": \"" << dtype << "\",\n";
  json << "  \"loss\": " << json_string(net.loss().name()) << ",\n";
  json << "  \"input_image\": " << detail::json_image(net.input_shape()) << ",\n";
  json << "  \"architecture\": " << json_string(describe(net.maps())) << ",\n";
  json << "  \"layer_sizes\": [" << net.input_size();
  for (Index k = 0; k < net.depth(); ++k) json << ", " << net.layer(k).outputs();
  json << "],\n  \"pre_activation\": \"W @ x + b[:, None], x with one sample per column\",\n";
  if (!net.dense_only())
    json << "  \"conv_pre_activation\": \"torch.nn.functional.conv2d(x.T.reshape(B, C, H, W), "
            "W, b, stride, padding)\",\n";
  json << "  \"layers\": [";
  image_shape image = net.input_shape();
  for (Index k = 0; k < net.depth(); ++k) {
    const Index number = k + 1, in = net.layer(k).inputs(), out = net.layer(k).outputs();
    const image_shape output = output_shape<S>(net.layer(k).map());
    json << (k > 0 ? "," : "") << "\n    {\"layer\": " << number
         << ", \"map\": " << json_string(describe(net.maps()[std::size_t(k)]))
         << ", \"inputs\": " << in << ", \"outputs\": " << out
         << ", \"input_image\": " << detail::json_image(image)
         << ", \"output_image\": " << detail::json_image(output) << ",\n";
    image = output;
    net.layer(k).visit([&](const auto& pair) {
      json << "     \"activation\": " << json_string(pair.name());
      if constexpr (detail::has_hyperparameters<std::decay_t<decltype(pair)>>) {
        json << ", \"hyperparameters\": [";
        const std::vector<double> values = pair.hyperparameters();
        for (std::size_t i = 0; i < values.size(); ++i)
          json << (i > 0 ? ", " : "") << detail::json_number(values[i]);
        json << "]";
      }
    });
    if (detail::npy_has_parameters(net, k)) {
      const auto layout = detail::npy_weights_layout(net, k);
      const std::vector<Index> bias_shape{net.layer(k).bias_size()};
      write_file_atomically(directory / detail::npy_weights_name(number),
                            detail::npy_file_bytes<S>(net.weights(k), layout.shape, layout.fortran),
                            function);
      detail::write_npy_as(directory / detail::npy_bias_name(number), net.bias(k), function);
      json << ",\n     \"weights\": {\"file\": " << json_string(detail::npy_weights_name(number))
           << ", \"shape\": " << detail::json_array(layout.shape) << "},\n";
      json << "     \"bias\": {\"file\": " << json_string(detail::npy_bias_name(number))
           << ", \"shape\": " << detail::json_array(bias_shape) << "}";
    }
    json << "}";
  }
  json << "\n  ]\n}\n";
  const std::string text = json.str();
  write_file_atomically(directory / "manifest.json",
                        std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()),
                        function);
}

/// Reads Wk.npy and bk.npy from `directory` for every layer k with parameters into `net`, whose
/// maps they must match (the shapes export_npy writes; a weights file in either order), float32
/// or float64 (converted to S as parse_npy says), every value finite. All or nothing: every file
/// is read and checked before any parameter changes. Throws data_error naming import_npy, the
/// file, the expected and the found shape (or what else is wrong); `net` is then unchanged.
template <Scalar S, class Loss, class... Pairs>
void import_npy(const std::filesystem::path& directory, program<S, Loss, Pairs...>& net) {
  using detail::concat;
  constexpr std::string_view function = "import_npy";
  detail::require_directory(directory, function);
  const auto load = [&](const std::string& name, const std::vector<Index>& expected) {
    const std::filesystem::path path = directory / name;
    const std::string context = concat(function, ": ", path.string());
    npy_array<S> array = parse_npy<S>(read_file(path, function), context);
    if (array.shape != expected)
      throw data_error(concat(context, ": expected shape ", detail::npy_shape_text(expected),
                              ", found ", detail::npy_shape_text(array.shape)));
    if (!all_finite(array.values))
      throw data_error(concat(context, ": expected finite values, found a NaN or Inf",
                              sizeof(S) == 4 ? " (or a float64 beyond float's range)" : ""));
    return std::move(array.values);
  };
  const auto depth = std::size_t(net.depth());
  std::vector<Matrix<S>> weights(depth), biases(depth);  // empty for maps without parameters
  for (Index k = 0; k < net.depth(); ++k) {
    if (!detail::npy_has_parameters(net, k)) continue;
    const auto layout = detail::npy_weights_layout(net, k);
    Matrix<S> w = load(detail::npy_weights_name(k + 1), layout.shape);
    weights[std::size_t(k)] = layout.fortran ? std::move(w) : Matrix<S>(w.transpose());
    biases[std::size_t(k)] = load(detail::npy_bias_name(k + 1), {net.layer(k).bias_size()});
  }
  for (Index k = 0; k < net.depth(); ++k) {
    if (!detail::npy_has_parameters(net, k)) continue;
    net.weights(k) = weights[std::size_t(k)];
    net.bias(k) = biases[std::size_t(k)].col(0);
  }
}

}  // namespace bilevel
