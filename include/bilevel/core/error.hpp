#pragma once
/// \file
/// Exception hierarchy: every message names the function, the expected and the actual value.

#include <array>
#include <cmath>
#include <limits>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>

#include "types.hpp"

namespace bilevel {

/// Base of every error the library throws for bad input.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
/// Matrix or layer shapes that do not fit together.
class shape_error : public error {
 public:
  using error::error;
};
/// Files that are missing, unwritable, truncated, corrupted or of something else.
class data_error : public error {
 public:
  using error::error;
};
/// NaN or Inf where a finite number is required.
class numeric_error : public error {
 public:
  using error::error;
};
/// Parameters outside their valid range (beta <= 0, batch 0, unknown names, ...).
class config_error : public error {
 public:
  using error::error;
};

namespace detail {

template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

/// The position of `name` in `names` (a library's spellings of an enum, in the enum's order);
/// throws config_error for any other name, listing them: `function: what must be "a", "b" or
/// "c", got "name"`.
template <std::size_t N>
std::size_t parse_name(const std::array<std::string_view, N>& names, std::string_view name,
                       std::string_view function, std::string_view what) {
  for (std::size_t i = 0; i < N; ++i)
    if (names[i] == name) return i;
  std::string listed;
  for (std::size_t i = 0; i < N; ++i)
    listed += concat(i == 0 ? "" : i + 1 == N ? " or " : ", ", '"', names[i], '"');
  throw config_error(concat(function, ": ", what, " must be ", listed, ", got \"", name, '"'));
}

/// Throws shape_error unless `rows x cols` equals the expected shape.
inline void require_shape(std::string_view function, std::string_view what, Index expected_rows,
                          Index expected_cols, Index rows, Index cols) {
  if (rows != expected_rows || cols != expected_cols) {
    throw shape_error(concat(function, ": ", what, " must be ", expected_rows, "x", expected_cols,
                             ", got ", rows, "x", cols));
  }
}

/// Throws shape_error unless a batch `what` has `expected_rows` rows: one sample per column, B
/// columns. Says so, and suggests the transpose, when the samples arrived as rows.
inline void require_sample_columns(std::string_view function, std::string_view what,
                                   Index expected_rows, Index rows, Index cols) {
  if (rows == expected_rows) return;
  throw shape_error(concat(function, ": ", what, " must be ", expected_rows,
                           " x B, one sample per column, got ", rows, "x", cols,
                           cols == expected_rows ? " (samples as rows? pass the transpose)" : ""));
}

/// Parts of a message, written out only when it is thrown. Checks run inside the inner
/// solvers' loops, where formatting a string on every call (a stream and its locale) took some
/// 6% of an LPOM step.
template <class... Parts>
struct message_parts {
  std::tuple<const Parts&...> parts;
};

/// The parts by reference: use them within the full expression that makes them (a require's
/// argument), while temporaries among them live.
template <class... Parts>
message_parts<Parts...> parts(const Parts&... each) {
  return {std::tie(each...)};
}

template <class... Parts>
std::ostream& operator<<(std::ostream& out, const message_parts<Parts...>& message) {
  std::apply([&out](const auto&... each) { ((out << each), ...); }, message.parts);
  return out;
}

/// Throws config_error unless `condition` holds; `expected` says what was required. `what`,
/// `expected` and `actual` are formatted on failure only (pass parts(...), not concat(...)).
template <class What, class Expected, class Value>
void require(bool condition, std::string_view function, const What& what,
             const Expected& expected, const Value& actual) {
  if (!condition) {
    throw config_error(concat(function, ": ", what, " must be ", expected, ", got ", actual));
  }
}

/// `total + count * each` for sizes and element counts; throws config_error naming `function`
/// and `what` when it does not fit an Index (a forged or mistyped size must not wrap around).
inline Index checked_size(std::string_view function, std::string_view what, Index total,
                          Index count, Index each) {
  Index product = 0, sum = 0;
  if (__builtin_mul_overflow(count, each, &product) || __builtin_add_overflow(total, product, &sum))
    throw config_error(concat(function, ": ", what, " overflows: ", total, " + ", count, " x ",
                              each, " exceeds ", std::numeric_limits<Index>::max()));
  return sum;
}

/// Throws config_error unless `value` is finite and > 0 (learning rates, spacings, penalties).
template <class Value>
void require_positive_finite(std::string_view function, std::string_view what, Value value) {
  require(std::isfinite(value), function, what, "finite", value);
  require(value > 0, function, what, "> 0", value);
}

}  // namespace detail
}  // namespace bilevel
