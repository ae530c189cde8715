#pragma once
/// \file
/// What the linear map of a layer provides (docs/methods.md §1). A layer computes
/// a = A x + b and then z = f(a) with its activation pair; A is one of the maps in layers/
/// (dense, conv2d, avg_pool), each with the same operations over a batch (one sample per column):
///
///   apply(W, b, x, out)                      out = A x + b
///   apply_linear(W, x, out)                  out = A x            (directions, differences)
///   apply_transpose(W, g, out, scale, mode)  out = scale A^T g    (or out += with output_mode::add)
///   parameter_gradient(x, g, scale, dW, db)  dW, db = scale times the gradient of <g, A x + b>
///   add_weight_gradient(x, g, scale, dW)     dW += scale times the gradient of <g, A x> in W
///   squared_norm_bound(W)                    an upper bound of ||A||_2^2 (block solvers' steps)
///   fan_in(), fan_out()                      the fans of the initialisation (layers/init.hpp)
///
/// W is a matrix view of the layer's slice of the program's flat parameter buffer (its shape is
/// the map's weight_rows() x weight_cols()) and b a vector of bias_size(). A map without
/// parameters (average pooling) takes neither and has no fans. Methods reach the maps only
/// through program_layer (layers/layer.hpp), never by asking which map a layer has.

namespace bilevel {

/// Whether an operation overwrites its output or adds to it.
enum class output_mode { assign, add };

/// A map with parameters W and b in the program's flat buffer.
template <class Map>
concept parameterized_map = requires(const Map& map) {
  map.weight_rows();
  map.weight_cols();
  map.bias_size();
};

}  // namespace bilevel
