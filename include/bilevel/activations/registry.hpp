#pragma once
/// \file
/// Activation pairs by name: `with_activation(name, options, body)` calls `body` with the
/// built-in pair of that name, so that code choosing its pair at run time (a command line)
/// compiles its training once per pair and runs fully typed after one dispatch. Adding a
/// built-in pair: its header, its tests and its lines here (name, type, dispatch).

#include <array>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>

#include "../core/error.hpp"
#include "hard_sigmoid.hpp"
#include "hard_tanh.hpp"
#include "identity.hpp"
#include "leaky_relu.hpp"
#include "relu.hpp"
#include "sigmoid.hpp"
#include "softmax.hpp"
#include "tanh.hpp"

namespace bilevel {

/// The settings some pairs take when made by name.
struct activation_options {
  double leaky_slope = 0.01;  ///< leaky_relu: the slope for a < 0
};

/// The registered names, as each pair's name() spells it.
inline constexpr std::array<std::string_view, 8> activation_names = {
    "relu", "leaky_relu", "hard_sigmoid", "hard_tanh", "sigmoid", "tanh", "softmax", "identity"};

/// The same pairs as types, in the same order: for code generic over every built-in pair (the
/// tests' TEMPLATE_LIST_TEST_CASEs).
using builtin_pairs =
    std::tuple<relu, leaky_relu, hard_sigmoid, hard_tanh, sigmoid, tanh_pair, softmax, identity>;

/// `body(pair)` with the built-in pair called `name`; every call of body must return the same
/// type. Throws config_error listing the registered names for an unknown one.
template <class Body>
decltype(auto) with_activation(std::string_view name, const activation_options& options,
                               Body&& body) {
  if (name == "relu") return body(relu{});
  if (name == "leaky_relu") return body(leaky_relu(options.leaky_slope));
  if (name == "hard_sigmoid") return body(hard_sigmoid{});
  if (name == "hard_tanh") return body(hard_tanh{});
  if (name == "sigmoid") return body(sigmoid{});
  if (name == "tanh") return body(tanh_pair{});
  if (name == "softmax") return body(softmax{});
  if (name == "identity") return body(identity{});
  std::string known;
  for (const std::string_view registered : activation_names)
    known += detail::concat(known.empty() ? "" : ", ", registered);
  throw config_error(
      detail::concat("with_activation: unknown pair \"", name, "\" (registered: ", known, ")"));
}

}  // namespace bilevel
