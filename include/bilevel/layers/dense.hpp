#pragma once
/// \file
/// A dense affine layer a = W z_prev + b followed by an activation pair (docs/methods.md §1).
/// The layer owns no numbers: W and b are views of slices of the program's flat parameter buffer
/// (and, with the same offsets, of a flat gradient buffer), so optimizers, checkpoints and
/// allreduce each touch one array.

#include <type_traits>
#include <utility>
#include <variant>

#include "../core/types.hpp"

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

/// One layer of a program whose layers may use any of the activation pairs `Pairs...`.
template <Scalar S, class... Pairs>
class dense_layer {
 public:
  using scalar_type = S;
  using pair_type = pair_variant<Pairs...>;

  dense_layer(Index inputs, Index outputs, pair_type pair, Index weight_offset, Index bias_offset)
      : inputs_(inputs),
        outputs_(outputs),
        pair_(std::move(pair)),
        weight_offset_(weight_offset),
        bias_offset_(bias_offset) {}

  Index inputs() const { return inputs_; }
  Index outputs() const { return outputs_; }
  Index weight_offset() const { return weight_offset_; }
  Index bias_offset() const { return bias_offset_; }
  const pair_type& pair() const { return pair_; }
  void set_pair(pair_type pair) { pair_ = std::move(pair); }

  /// Calls `visitor(pair)` with the layer's concrete pair type: one dispatch per layer and
  /// batch, never per element.
  template <class Visitor>
  decltype(auto) visit(Visitor&& visitor) const {
    return std::visit(std::forward<Visitor>(visitor), pair_);
  }

  /// W (outputs x inputs) and b (outputs) inside a flat buffer of this program's layout.
  MatrixMap<S> weights(Vector<S>& flat) const {
    return MatrixMap<S>(flat.data() + weight_offset_, outputs_, inputs_);
  }
  ConstMatrixMap<S> weights(const Vector<S>& flat) const {
    return ConstMatrixMap<S>(flat.data() + weight_offset_, outputs_, inputs_);
  }
  VectorMap<S> bias(Vector<S>& flat) const {
    return VectorMap<S>(flat.data() + bias_offset_, outputs_);
  }
  ConstVectorMap<S> bias(const Vector<S>& flat) const {
    return ConstVectorMap<S>(flat.data() + bias_offset_, outputs_);
  }

 private:
  Index inputs_, outputs_;
  pair_type pair_;
  Index weight_offset_, bias_offset_;
};

}  // namespace bilevel
