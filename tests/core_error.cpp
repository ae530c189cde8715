// The checks' messages (core/error.hpp): formatted only when a check fails, and then in full.
#include <catch2/catch.hpp>

#include <ostream>
#include <string>

#include "bilevel/core/error.hpp"

namespace {

/// Prints its text and counts how often it was printed.
struct counted {
  std::string text;
  int* prints;
};

std::ostream& operator<<(std::ostream& out, const counted& value) {
  ++*value.prints;
  return out << value.text;
}

}  // namespace

TEST_CASE("require formats nothing while its condition holds", "[errors]") {
  int prints = 0;
  const counted what{"the batch", &prints}, expected{"> 0", &prints}, actual{"0", &prints};
  bilevel::detail::require(true, "f", what, expected, actual);
  bilevel::detail::require(true, "f", bilevel::detail::parts(what, " size"),
                           bilevel::detail::parts(expected), actual);
  CHECK(prints == 0);
}

TEST_CASE("require throws its whole message when its condition fails", "[errors]") {
  int prints = 0;
  const counted what{"the batch", &prints}, expected{"> 0", &prints}, actual{"0", &prints};
  CHECK_THROWS_MATCHES(bilevel::detail::require(false, "f", what, expected, actual),
                       bilevel::config_error,
                       Catch::Message("f: the batch must be > 0, got 0"));
  CHECK(prints == 3);
}

TEST_CASE("parts print as concat does, temporaries included", "[errors]") {
  using bilevel::detail::concat, bilevel::detail::parts;
  const bilevel::Index columns = 4;
  CHECK(concat(parts("in [0, ", columns + 1, ")"), '!') == "in [0, 5)!");
  CHECK(concat(parts()) == "");
  CHECK_THROWS_MATCHES(
      bilevel::detail::require(columns > 9, "g", parts("column ", columns - 1),
                               parts("in [0, ", columns * 2, ")"), parts(columns, " x ", 2.5)),
      bilevel::config_error, Catch::Message("g: column 3 must be in [0, 8), got 4 x 2.5"));
}
