#pragma once
/// \file
/// A program's maps as data, and the text grammar the trainer takes (docs/methods.md §1):
/// layers separated by '-', each one of
///
///   dense<N>                     N outputs
///   conv<F>k<K>[s<S>][p<P>]      F filters of K x K, stride S (1), zero padding P (0)
///   pool<K>[s<S>]                average pooling over K x K windows, stride S (K)
///
/// e.g. LeNet-5 on 28 x 28 images: conv6k5p2-pool2-conv16k5-pool2-dense120-dense84-dense10.
/// A dense layer reads its input image as one column (a flatten costs nothing in this layout,
/// layers/image.hpp); its output is a 1 x 1 image of N channels.

#include <charconv>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "../core/error.hpp"
#include "image.hpp"
#include "layer.hpp"

namespace bilevel {

struct dense_spec {
  Index outputs = 1;
  friend bool operator==(const dense_spec&, const dense_spec&) = default;
};
struct conv_spec {
  Index filters = 1, kernel = 1, stride = 1, padding = 0;
  friend bool operator==(const conv_spec&, const conv_spec&) = default;
};
struct pool_spec {
  Index kernel = 2, stride = 0;  ///< stride 0: the kernel size
  friend bool operator==(const pool_spec&, const pool_spec&) = default;
};
using map_spec = std::variant<dense_spec, conv_spec, pool_spec>;

/// The token of `spec` in the grammar above (defaults left out), so parse and describe
/// round-trip.
inline std::string describe(const map_spec& spec) {
  return std::visit(
      [](const auto& s) -> std::string {
        using T = std::decay_t<decltype(s)>;
        if constexpr (std::is_same_v<T, dense_spec>) {
          return detail::concat("dense", s.outputs);
        } else if constexpr (std::is_same_v<T, conv_spec>) {
          std::string text = detail::concat("conv", s.filters, "k", s.kernel);
          if (s.stride != 1) text += detail::concat("s", s.stride);
          if (s.padding != 0) text += detail::concat("p", s.padding);
          return text;
        } else {
          std::string text = detail::concat("pool", s.kernel);
          if (s.stride != 0 && s.stride != s.kernel) text += detail::concat("s", s.stride);
          return text;
        }
      },
      spec);
}

inline std::string describe(const std::vector<map_spec>& specs) {
  std::string text;
  for (const map_spec& spec : specs) {
    if (!text.empty()) text.push_back('-');
    text.append(describe(spec));
  }
  return text;
}

namespace detail {

/// Reads the positive number after `prefix` at the front of `rest`, if rest starts with it.
inline bool read_field(std::string_view& rest, std::string_view prefix, Index& value,
                       std::string_view token, Index smallest) {
  if (!rest.starts_with(prefix)) return false;
  rest.remove_prefix(prefix.size());
  const char* end = rest.data() + rest.size();
  const auto [stop, error] = std::from_chars(rest.data(), end, value);
  if (error != std::errc() || stop == rest.data() || value < smallest)
    throw config_error(concat("parse_architecture: layer \"", token, "\": \"", prefix,
                              "\" must be followed by a number >= ", smallest));
  rest.remove_prefix(std::size_t(stop - rest.data()));
  return true;
}

inline map_spec parse_map_token(std::string_view token) {
  std::string_view rest = token;
  auto finish = [&](const map_spec& spec) {
    if (!rest.empty())
      throw config_error(concat("parse_architecture: layer \"", token, "\": unexpected \"", rest,
                                "\" (grammar: dense<N>, conv<F>k<K>[s<S>][p<P>], pool<K>[s<S>])"));
    return spec;
  };
  dense_spec dense;
  if (read_field(rest, "dense", dense.outputs, token, 1)) return finish(dense);
  conv_spec conv;
  if (read_field(rest, "conv", conv.filters, token, 1)) {
    if (!read_field(rest, "k", conv.kernel, token, 1))
      throw config_error(concat("parse_architecture: layer \"", token,
                                "\": a convolution needs its kernel size, as in conv6k5"));
    read_field(rest, "s", conv.stride, token, 1);
    read_field(rest, "p", conv.padding, token, 0);
    return finish(conv);
  }
  pool_spec pool;
  if (read_field(rest, "pool", pool.kernel, token, 1)) {
    read_field(rest, "s", pool.stride, token, 1);
    return finish(pool);
  }
  throw config_error(concat("parse_architecture: layer \"", token,
                            "\" is none of dense<N>, conv<F>k<K>[s<S>][p<P>], pool<K>[s<S>]"));
}

}  // namespace detail

/// The layers of `text` in the grammar above; throws config_error naming the first bad token.
inline std::vector<map_spec> parse_architecture(std::string_view text) {
  std::vector<map_spec> specs;
  while (true) {
    const std::size_t dash = text.find('-');
    const std::string_view token = text.substr(0, dash);
    if (token.empty())
      throw config_error(detail::concat("parse_architecture: an empty layer in \"", text,
                                        "\" (layers are separated by single '-')"));
    specs.push_back(detail::parse_map_token(token));
    if (dash == std::string_view::npos) return specs;
    text.remove_prefix(dash + 1);
  }
}

/// The map of `spec` on images of shape `input`; layer `number` (1-based) is named in the
/// shape_error of a window larger than its padded input.
template <Scalar S>
layer_map<S> make_map(const map_spec& spec, const image_shape& input, Index number) {
  try {
    return std::visit(
        [&](const auto& s) -> layer_map<S> {
          using T = std::decay_t<decltype(s)>;
          if constexpr (std::is_same_v<T, dense_spec>)
            return dense<S>(input.size(), s.outputs);
          else if constexpr (std::is_same_v<T, conv_spec>)
            return conv2d<S>({input, s.filters, s.kernel, s.stride, s.padding});
          else
            return avg_pool<S>({input, s.kernel, s.stride});
        },
        spec);
  } catch (const shape_error& error) {
    throw shape_error(detail::concat("program: layer ", number, " (", describe(spec),
                                     ") does not fit its input ", input.text(), ": ",
                                     error.what()));
  } catch (const config_error& error) {
    throw config_error(detail::concat("program: layer ", number, " (", describe(spec), "): ",
                                      error.what()));
  }
}

/// The image a map produces (a dense map: a 1 x 1 image of its outputs).
template <Scalar S>
image_shape output_shape(const layer_map<S>& map) {
  return std::visit(
      [](const auto& typed) -> image_shape {
        if constexpr (std::is_same_v<std::decay_t<decltype(typed)>, dense<S>>)
          return {typed.outputs(), 1, 1};
        else
          return typed.output();
      },
      map);
}

}  // namespace bilevel
