#pragma once
/// \file
/// Weight initialisation, reproducible bit for bit from a seed: every draw comes from
/// random_source (never from std distributions, whose output differs between standard libraries).
///
/// Draw order: one draw per weight, column-major over W (W(0,0), W(1,0), ..., W(0,1), ...),
/// which is also the order of W in the flat parameter buffer. Biases draw nothing (they are 0),
/// so two layers initialised one after the other from the same source get disjoint draws.

#include <Eigen/Core>
#include <array>
#include <cmath>
#include <concepts>
#include <string>
#include <string_view>
#include <type_traits>

#include "../core/error.hpp"
#include "../core/random.hpp"
#include "../core/types.hpp"

namespace bilevel {

enum class init_scheme {
  glorot_uniform,        // U(-r, r), r = sqrt(6 / (in + out))
  he_normal,             // N(0, 2 / in)
  negative_first_layer,  // the Fenchel BP paper's negative start (its code, docs/methods.md §5.2):
                         // layer 1 -|U(-r, r)|, the layers above glorot_uniform; on
                         // non-negative inputs every first-layer ReLU is dead
  negative_all_layers,   // every layer -|U(-r, r)|: a harder variant, not the paper's
};

/// The command-line names, in the enum's order: "negative" is the paper's start.
inline constexpr std::array<std::string_view, 4> init_scheme_names = {"glorot", "he", "negative",
                                                                      "all-negative"};

/// The scheme `name` spells; throws config_error listing init_scheme_names for any other name.
inline init_scheme parse_init_scheme(std::string_view name) {
  return init_scheme(
      detail::parse_name(init_scheme_names, name, "parse_init_scheme", "init scheme"));
}

/// The name parse_init_scheme accepts, so the two round-trip ("unknown" for a value outside
/// the enum).
inline std::string_view to_string(init_scheme scheme) {
  const auto index = std::size_t(scheme);
  return index < init_scheme_names.size() ? init_scheme_names[index] : "unknown";
}

namespace detail {

/// The draws of initialize() with the fans of the layer given: r = sqrt(6 / (fan_in + fan_out))
/// and 2 / fan_in. A dense W (out x in) has fan_in = in and fan_out = out; a convolution's
/// (C*K*K) x F filters have fan_in = C*K*K and fan_out = F*K*K, as in PyTorch.
template <Scalar S>
void initialize_weights(init_scheme scheme, Eigen::Ref<Matrix<S>> weights, random_source& rng,
                        Index layer, Index fan_in, Index fan_out) {
  require(layer >= 0, "initialize", "the layer index", ">= 0", layer);
  if (weights.size() == 0) return;  // also keeps 6 / (in + out) and 2 / in finite below

  // Draws are made in double and rounded once, so float and double weights share one sequence.
  switch (scheme) {
    case init_scheme::glorot_uniform:
    case init_scheme::negative_first_layer:
    case init_scheme::negative_all_layers: {
      // The negative starts take the same draws as glorot_uniform, with the sign taken away.
      const bool negative = scheme == init_scheme::negative_all_layers ||
                            (scheme == init_scheme::negative_first_layer && layer == 0);
      const double r = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
      for (Index j = 0; j < weights.cols(); ++j) {
        for (Index i = 0; i < weights.rows(); ++i) {
          const double w = rng.uniform(-r, r);
          weights(i, j) = static_cast<S>(negative ? -std::abs(w) : w);
        }
      }
      return;
    }
    case init_scheme::he_normal: {
      const double stddev = std::sqrt(2.0 / static_cast<double>(fan_in));
      for (Index j = 0; j < weights.cols(); ++j) {
        for (Index i = 0; i < weights.rows(); ++i)
          weights(i, j) = static_cast<S>(stddev * rng.normal());
      }
      return;
    }
  }
  throw config_error(
      concat("initialize: init scheme must be one of glorot, he, "
             "negative, all-negative, got enum value ",
             static_cast<int>(scheme)));
}

}  // namespace detail

/// Fills W (out x in) of the dense layer with 0-based index `layer` in its program by `scheme`
/// and sets b (out) to 0; only negative_first_layer depends on the index. Explicit-scalar
/// form, for callers that write initialize<S>(...); the overload below deduces S.
template <Scalar S>
void initialize(init_scheme scheme, std::type_identity_t<Eigen::Ref<Matrix<S>>> weights,
                std::type_identity_t<Eigen::Ref<Vector<S>>> bias, random_source& rng,
                Index layer = 0) {
  detail::require_shape("initialize", "bias", weights.rows(), 1, bias.rows(), bias.cols());
  detail::require(layer >= 0, "initialize", "the layer index", ">= 0", layer);
  bias.setZero();
  detail::initialize_weights<S>(scheme, weights, rng, layer, weights.cols(), weights.rows());
}

namespace detail {
template <class T>
concept float_dense = std::floating_point<typename std::remove_cvref_t<T>::Scalar>;
}  // namespace detail

/// Deducing form: W and b may be matrices, vectors, Maps into the flat parameter buffer, Refs
/// or blocks, as long as they are writable and share one scalar type.
template <class WeightMatrix, class BiasVector>
requires detail::float_dense<WeightMatrix> &&
    std::same_as < typename std::remove_cvref_t<WeightMatrix>::Scalar,
typename std::remove_cvref_t<BiasVector>::Scalar >
    void initialize(init_scheme scheme, WeightMatrix&& weights, BiasVector&& bias,
                    random_source& rng, Index layer = 0) {
  using S = typename std::remove_cvref_t<WeightMatrix>::Scalar;
  initialize<S>(scheme, weights, bias, rng, layer);
}

}  // namespace bilevel
