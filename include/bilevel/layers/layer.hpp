#pragma once
/// \file
/// One layer of a program: a linear map (layers/map.hpp: dense, conv2d or avg_pool) followed by
/// an activation pair, a = A z_prev + b, z = f(a) (docs/methods.md §1). The layer owns no
/// numbers: W and b are views of slices of the program's flat parameter buffer (and, with the
/// same offsets, of a flat gradient buffer), so optimizers, checkpoints and allreduce each touch
/// one array. Methods call the operations below and never ask which map a layer has.

#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "../core/types.hpp"
#include "avg_pool.hpp"
#include "conv2d.hpp"
#include "dense.hpp"
#include "init.hpp"
#include "map.hpp"

namespace bilevel {

namespace detail {

/// std::variant of the distinct types among Ts (variant<relu, relu> could not be built from relu).
template <class Variant, class... Ts>
struct unique_variant_impl {
  using type = Variant;
};
template <class... Done, class T, class... Rest>
struct unique_variant_impl<std::variant<Done...>, T, Rest...> {
  using type = typename std::conditional_t<
      (std::is_same_v<T, Done> || ...), unique_variant_impl<std::variant<Done...>, Rest...>,
      unique_variant_impl<std::variant<Done..., T>, Rest...>>::type;
};

}  // namespace detail

template <class... Pairs>
using pair_variant = typename detail::unique_variant_impl<std::variant<>, Pairs...>::type;

template <Scalar S>
using layer_map = std::variant<dense<S>, conv2d<S>, avg_pool<S>>;

/// One layer of a program whose layers may use any of the activation pairs `Pairs...`.
template <Scalar S, class... Pairs>
class program_layer {
 public:
  using scalar_type = S;
  using pair_type = pair_variant<Pairs...>;
  using map_type = layer_map<S>;

  program_layer(map_type map, pair_type pair, Index weight_offset, Index bias_offset)
      : map_(std::move(map)),
        pair_(std::move(pair)),
        weight_offset_(weight_offset),
        bias_offset_(bias_offset) {
    std::visit(
        [&](const auto& typed) {
          inputs_ = typed.inputs();
          outputs_ = typed.outputs();
          if constexpr (parameterized_map<std::decay_t<decltype(typed)>>) {
            weight_rows_ = typed.weight_rows();
            weight_cols_ = typed.weight_cols();
            bias_size_ = typed.bias_size();
          }
        },
        map_);
  }

  Index inputs() const { return inputs_; }
  Index outputs() const { return outputs_; }
  /// W's shape in the flat buffer (0 x 0 for a map without parameters) and b's length.
  Index weight_rows() const { return weight_rows_; }
  Index weight_cols() const { return weight_cols_; }
  Index bias_size() const { return bias_size_; }
  Index weight_count() const { return weight_rows_ * weight_cols_; }
  Index weight_offset() const { return weight_offset_; }
  Index bias_offset() const { return bias_offset_; }
  const map_type& map() const { return map_; }
  const pair_type& pair() const { return pair_; }
  void set_pair(pair_type pair) { pair_ = std::move(pair); }

  /// Calls `visitor(pair)` with the layer's concrete pair type: one dispatch per layer and
  /// batch, never per element.
  template <class Visitor>
  decltype(auto) visit(Visitor&& visitor) const {
    return std::visit(std::forward<Visitor>(visitor), pair_);
  }

  /// W and b inside a flat buffer of this program's layout.
  MatrixMap<S> weights(Vector<S>& flat) const {
    return MatrixMap<S>(flat.data() + weight_offset_, weight_rows_, weight_cols_);
  }
  ConstMatrixMap<S> weights(const Vector<S>& flat) const {
    return ConstMatrixMap<S>(flat.data() + weight_offset_, weight_rows_, weight_cols_);
  }
  VectorMap<S> bias(Vector<S>& flat) const {
    return VectorMap<S>(flat.data() + bias_offset_, bias_size_);
  }
  ConstVectorMap<S> bias(const Vector<S>& flat) const {
    return ConstVectorMap<S>(flat.data() + bias_offset_, bias_size_);
  }

  /// Draws W by `scheme` (layers/init.hpp) with the map's fans and sets b to 0, in `flat`;
  /// `index` is the layer's 0-based index (the negative start treats layer 0 apart).
  void initialize(init_scheme scheme, Vector<S>& flat, random_source& random, Index index) const {
    visit_map([&](const auto& map) {
      if constexpr (parameterized_map<std::decay_t<decltype(map)>>) {
        bias(flat).setZero();
        detail::initialize_weights<S>(scheme, weights(flat), random, index, map.fan_in(),
                                      map.fan_out());
      }
    });
  }

  /// An upper bound of ||A||_2^2 (for step sizes of block solvers), from the map.
  S squared_norm_bound(const Vector<S>& flat) const {
    return std::visit(
        [&](const auto& map) -> S {
          if constexpr (parameterized_map<std::decay_t<decltype(map)>>)
            return map.squared_norm_bound(weights(flat));
          else
            return map.squared_norm_bound();
        },
        map_);
  }

  /// out = A x + b with the parameters in `flat` (out already outputs() x B).
  void apply(const Vector<S>& flat, const MatrixCRef<S>& x, MatrixRef<S> out) const {
    visit_map([&](const auto& map) {
      if constexpr (parameterized_map<std::decay_t<decltype(map)>>)
        map.apply(weights(flat), bias(flat), x, out);
      else
        map.apply(x, out);
    });
  }

  /// out = A x (no bias).
  void apply_linear(const Vector<S>& flat, const MatrixCRef<S>& x, MatrixRef<S> out) const {
    visit_map([&](const auto& map) {
      if constexpr (parameterized_map<std::decay_t<decltype(map)>>)
        map.apply_linear(weights(flat), x, out);
      else
        map.apply(x, out);
    });
  }

  /// out = scale A^T g, or out += that with output_mode::add (out already inputs() x B).
  void apply_transpose(const Vector<S>& flat, const MatrixCRef<S>& g, MatrixRef<S> out,
                       S scale = S(1), output_mode mode = output_mode::assign) const {
    visit_map([&](const auto& map) {
      if constexpr (parameterized_map<std::decay_t<decltype(map)>>)
        map.apply_transpose(weights(flat), g, out, scale, mode);
      else
        map.apply_transpose(g, out, scale, mode);
    });
  }

  /// dW = scale times the gradient of <g, A x + b> in W, db likewise in b, for an input x and an
  /// output-side signal g; into any buffers of W's and b's shapes (a flat gradient's slices,
  /// or a method's own). Nothing for a map without parameters.
  void parameter_gradient(const MatrixCRef<S>& x, const MatrixCRef<S>& g, S scale,
                          MatrixRef<S> weight_gradient, Eigen::Ref<Vector<S>> bias_gradient) const {
    visit_map([&](const auto& map) {
      if constexpr (parameterized_map<std::decay_t<decltype(map)>>)
        map.parameter_gradient(x, g, scale, weight_gradient, bias_gradient);
    });
  }

  /// The same into a flat gradient buffer of the program's layout.
  void parameter_gradient(const MatrixCRef<S>& x, const MatrixCRef<S>& g, S scale,
                          Vector<S>& gradient) const {
    parameter_gradient(x, g, scale, weights(gradient), bias(gradient));
  }

  /// dW += scale times the gradient of <g, A x> in W (a second term of a gradient, no bias).
  void add_weight_gradient(const MatrixCRef<S>& x, const MatrixCRef<S>& g, S scale,
                           Vector<S>& gradient) const {
    visit_map([&](const auto& map) {
      if constexpr (parameterized_map<std::decay_t<decltype(map)>>)
        map.add_weight_gradient(x, g, scale, weights(gradient));
    });
  }

 private:
  template <class Visitor>
  void visit_map(Visitor&& visitor) const {
    std::visit(std::forward<Visitor>(visitor), map_);
  }

  map_type map_;
  pair_type pair_;
  Index weight_offset_, bias_offset_;
  Index inputs_ = 0, outputs_ = 0, weight_rows_ = 0, weight_cols_ = 0, bias_size_ = 0;
};

}  // namespace bilevel
