#pragma once
/// \file
/// A program's linear maps A x and A^T g at parameters that stay fixed for a while (an inner
/// solve), with each dense layer's W and W^T packed once for the kernel of the matrix product
/// (core/packed_product.hpp) when it is first used, instead of on every product. Other maps
/// (convolution, pooling) go through the program as always. Between freeze() and thaw() the
/// parameters must not change; outside, every product goes through the program.

#include <variant>
#include <vector>

#include "../core/packed_product.hpp"
#include "../core/types.hpp"
#include "dense.hpp"
#include "map.hpp"

namespace bilevel::detail {

template <Scalar S>
class packed_maps {
 public:
  /// From now on the maps of `net` may be packed, for batches of up to `max_cols` samples.
  template <class Program>
  void freeze(const Program& net, Index max_cols) {
    maps_.resize(std::size_t(net.depth()));
    for (packed_map& map : maps_) map.forward_packed = map.transpose_packed = false;
    max_cols_ = max_cols;
    frozen_ = true;
  }

  /// The parameters may change again: products go through the program.
  void thaw() { frozen_ = false; }

  /// freeze() until the returned guard goes out of scope.
  template <class Program>
  [[nodiscard]] auto frozen(const Program& net, Index max_cols) {
    struct guard {
      packed_maps& maps;
      ~guard() { maps.thaw(); }
    };
    freeze(net, max_cols);
    return guard{*this};
  }

  /// out = A x for layer `index` (0-based), as net.linear.
  template <class Program>
  void linear(const Program& net, Index index, const MatrixCRef<S>& x, MatrixRef<S> out) {
    if (!packs(net, index, x.cols())) return net.linear(index, x, out);
    packed_map& map = maps_[std::size_t(index)];
    if (!map.forward_packed) map.forward.pack(net.weights(index), max_cols_);
    map.forward_packed = true;
    map.forward.multiply(x, out, S(1));
  }

  /// out = scale A^T g for layer `index`, or out += that with output_mode::add, as
  /// net.transpose.
  template <class Program>
  void transpose(const Program& net, Index index, const MatrixCRef<S>& g, MatrixRef<S> out,
                 S scale, output_mode mode = output_mode::assign) {
    if (!packs(net, index, g.cols())) return net.transpose(index, g, out, scale, mode);
    packed_map& map = maps_[std::size_t(index)];
    if (!map.transpose_packed) map.transpose.pack(net.weights(index).transpose(), max_cols_);
    map.transpose_packed = true;
    map.transpose.multiply(g, out, scale, mode == output_mode::add);
  }

 private:
  struct packed_map {
    packed_matrix<S> forward, transpose;
    bool forward_packed = false, transpose_packed = false;
  };

  template <class Program>
  bool packs(const Program& net, Index index, Index cols) const {
    return frozen_ && cols <= max_cols_ &&
           std::holds_alternative<dense<S>>(net.layer(index).map());
  }

  std::vector<packed_map> maps_;
  Index max_cols_ = 1;
  bool frozen_ = false;
};

}  // namespace bilevel::detail
