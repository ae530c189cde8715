#pragma once
/// \file
/// Byte streams for a component's saved state (checkpoints): integers and IEEE floats in
/// little-endian order whatever the host, length-prefixed text and arrays, and length-prefixed
/// sections. The reader checks every length against the bytes that are left, so a truncated or
/// corrupt stream gives a data_error naming what was being read, never an over-read or a huge
/// allocation.
///
/// A component is checkpointable when it has
///   void save_state(state_writer& out) const;   // starts with its own name: out.write_text("adam")
///   void load_state(state_reader& in);          // in.expect_text("adam", ...), then its state
/// and load_state changes the component only after everything it reads has been validated.

#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "error.hpp"
#include "types.hpp"

namespace bilevel {

/// The largest count (epochs, optimizer steps) saved state may hold: far beyond any run, exact in
/// a double, and small enough that counting on from it cannot overflow.
inline constexpr Index max_saved_count = Index(1) << 53;

namespace detail {

/// "float", "double", "long double": how a scalar type is named in saved state.
template <Scalar S>
constexpr std::string_view scalar_name() {
  if constexpr (std::is_same_v<S, float>) return "float";
  if constexpr (std::is_same_v<S, double>) return "double";
  return "long double";
}

}  // namespace detail

class state_writer {
 public:
  void write_u64(std::uint64_t value) {
    for (int byte = 0; byte < 8; ++byte) bytes_.push_back(std::uint8_t(value >> (8 * byte)));
  }
  void write_u32(std::uint32_t value) {
    for (int byte = 0; byte < 4; ++byte) bytes_.push_back(std::uint8_t(value >> (8 * byte)));
  }
  void write_index(Index value) { write_u64(std::bit_cast<std::uint64_t>(std::int64_t(value))); }
  void write_bool(bool value) { bytes_.push_back(value ? 1 : 0); }
  void write_f64(double value) { write_u64(std::bit_cast<std::uint64_t>(value)); }

  void write_bytes(std::span<const std::uint8_t> raw) {
    bytes_.insert(bytes_.end(), raw.begin(), raw.end());
  }

  void write_text(std::string_view text) {
    write_u64(text.size());
    bytes_.insert(bytes_.end(), text.begin(), text.end());
  }

  /// A scalar array: its type name, its length, then the values.
  template <Scalar S>
  void write_values(const Eigen::Ref<const Vector<S>>& values) {
    static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                  "state_writer: float and double arrays only");
    write_text(detail::scalar_name<S>());
    write_u64(std::uint64_t(values.size()));
    for (Index i = 0; i < values.size(); ++i) {
      if constexpr (std::is_same_v<S, float>)
        write_u32(std::bit_cast<std::uint32_t>(values[i]));
      else
        write_u64(std::bit_cast<std::uint64_t>(values[i]));
    }
  }
  void write_values(const std::vector<double>& values) {
    write_values<double>(Eigen::Map<const Vector<double>>(values.data(), Index(values.size())));
  }

  /// Writes `tag`, then what `body(*this)` writes, prefixed by its length.
  template <class Body>
  void write_section(std::string_view tag, Body&& body) {
    write_text(tag);
    const std::size_t length_at = bytes_.size();
    write_u64(0);
    const std::size_t begin = bytes_.size();
    std::forward<Body>(body)(*this);
    const std::uint64_t length = bytes_.size() - begin;
    for (int byte = 0; byte < 8; ++byte) bytes_[length_at + std::size_t(byte)] = std::uint8_t(length >> (8 * byte));
  }

  const std::vector<std::uint8_t>& bytes() const { return bytes_; }
  std::vector<std::uint8_t> take_bytes() { return std::move(bytes_); }

 private:
  std::vector<std::uint8_t> bytes_;
};

class state_reader {
 public:
  /// `context` starts every error message, e.g. "load_checkpoint: run.ckpt".
  state_reader(std::span<const std::uint8_t> bytes, std::string context)
      : bytes_(bytes), context_(std::move(context)) {}

  std::uint64_t read_u64(std::string_view what) {
    const auto raw = take(8, what);
    std::uint64_t value = 0;
    for (int byte = 0; byte < 8; ++byte) value |= std::uint64_t(raw[std::size_t(byte)]) << (8 * byte);
    return value;
  }
  std::uint32_t read_u32(std::string_view what) {
    const auto raw = take(4, what);
    std::uint32_t value = 0;
    for (int byte = 0; byte < 4; ++byte) value |= std::uint32_t(raw[std::size_t(byte)]) << (8 * byte);
    return value;
  }
  Index read_index(std::string_view what) {
    return Index(std::bit_cast<std::int64_t>(read_u64(what)));
  }
  /// An index that must lie in [low, high].
  Index read_index(std::string_view what, Index low, Index high) {
    const Index value = read_index(what);
    if (value < low || value > high) {
      if (low == high) fail(what, low, value);
      fail(what, detail::concat("in [", low, ", ", high, "]"), value);
    }
    return value;
  }
  /// A count of epochs or steps: in [0, max_saved_count].
  Index read_count(std::string_view what) { return read_index(what, 0, max_saved_count); }
  bool read_bool(std::string_view what) {
    const std::uint8_t value = take(1, what)[0];
    if (value > 1) fail(what, "0 or 1", int(value));
    return value == 1;
  }
  double read_f64(std::string_view what) { return std::bit_cast<double>(read_u64(what)); }
  /// A double that must be finite.
  double read_finite(std::string_view what) {
    const double value = read_f64(what);
    if (!std::isfinite(value)) fail(what, "finite", value);
    return value;
  }
  /// A double that must lie in [low, high] (so it is finite too).
  double read_finite(std::string_view what, double low, double high) {
    const double value = read_f64(what);
    if (!(value >= low && value <= high)) fail(what, detail::concat("in [", low, ", ", high, "]"), value);
    return value;
  }

  std::string read_text(std::string_view what) {
    const std::uint64_t length = read_u64(what);
    require_left(length, 1, what);
    const auto raw = take(std::size_t(length), what);
    return std::string(raw.begin(), raw.end());
  }

  /// Reads text and throws unless it is `expected`.
  void expect_text(std::string_view expected, std::string_view what) {
    const std::string text = read_text(what);
    if (text != expected)
      fail(what, detail::concat("'", expected, "'"), detail::concat("'", text, "'"));
  }

  /// A scalar array written by `write_values<S>`: the type must be S; with `expected_size` >= 0,
  /// the length must be that.
  template <Scalar S>
  Vector<S> read_values(std::string_view what, Index expected_size = -1) {
    expect_text(detail::scalar_name<S>(), detail::concat(what, " scalar type"));
    const std::uint64_t size = read_u64(detail::concat(what, " length"));
    if (expected_size >= 0 && size != std::uint64_t(expected_size))
      fail(detail::concat(what, " length"), expected_size, size);
    require_left(size, sizeof(S), what);
    Vector<S> values(static_cast<Index>(size));
    for (Index i = 0; i < values.size(); ++i) {
      if constexpr (std::is_same_v<S, float>)
        values[i] = std::bit_cast<float>(read_u32(what));
      else
        values[i] = std::bit_cast<double>(read_u64(what));
    }
    return values;
  }
  std::vector<double> read_double_list(std::string_view what) {
    const Vector<double> values = read_values<double>(what);
    return std::vector<double>(values.begin(), values.end());
  }

  /// The section written by write_section(tag, ...): checks the tag and returns a reader over
  /// exactly its bytes (finish() it after reading, to catch leftovers).
  state_reader read_section(std::string_view tag) {
    expect_text(tag, "section name");
    const std::uint64_t length = read_u64(detail::concat("length of section '", tag, "'"));
    require_left(length, 1, detail::concat("section '", tag, "'"));
    return state_reader(take(std::size_t(length), tag),
                        detail::concat(context_, ", section '", tag, "'"));
  }

  bool at_end() const { return position_ == bytes_.size(); }

  /// Throws unless every byte has been read.
  void finish() const {
    if (!at_end())
      throw data_error(detail::concat(context_, ": ", bytes_.size() - position_,
                                      " unexpected bytes after the end of the state"));
  }

  /// Throws data_error "<context>: <what> must be <expected>, got <actual>".
  template <class Expected, class Actual>
  [[noreturn]] void fail(std::string_view what, const Expected& expected,
                         const Actual& actual) const {
    throw data_error(detail::concat(context_, ": ", what, " must be ", expected, ", got ", actual));
  }

  /// Runs `check()` (e.g. a constructor that validates settings read from the stream) and
  /// reports any error it throws as a data_error of this stream.
  template <class Check>
  decltype(auto) validate(std::string_view what, Check&& check) const {
    try {
      return std::forward<Check>(check)();
    } catch (const error& e) {
      throw data_error(detail::concat(context_, ": ", what, " invalid: ", e.what()));
    }
  }

 private:
  /// Throws unless `count` items of `item_size` bytes are left.
  void require_left(std::uint64_t count, std::uint64_t item_size, std::string_view what) const {
    const std::uint64_t left = bytes_.size() - position_;
    if (count > left / item_size)
      throw data_error(detail::concat(context_, ": truncated while reading ", what, " (",
                                      count, " x ", item_size, " bytes needed, ", left,
                                      " left)"));
  }

  std::span<const std::uint8_t> take(std::size_t count, std::string_view what) {
    require_left(count, 1, what);
    const auto part = bytes_.subspan(position_, count);
    position_ += count;
    return part;
  }

  std::span<const std::uint8_t> bytes_;
  std::size_t position_ = 0;
  std::string context_;
};

}  // namespace bilevel
