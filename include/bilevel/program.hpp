#pragma once
/// \file
/// The nested program (docs/methods.md §1): layers k = 1..L with a_k = A_k z_{k-1} + b_k and
/// z_k = f_k(a_k), z_0 = x, and an outer loss l(z_L, y). Each A_k is a dense, convolution or
/// average-pooling map (layers/layer.hpp); depth and maps are runtime values, each layer's
/// activation pair is one of the types `Pairs...`, fixed at compile time (no per-element dispatch).
///
/// All parameters live in one flat buffer laid out as [W_1 .. W_L | b_1 .. b_L]: the weights
/// form a prefix, which is what weight decay applies to. A gradient is a flat buffer with the
/// same layout (see weights() / bias() with a buffer argument).

#include <limits>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <utility>
#include <vector>

#include "activations/concept.hpp"
#include "activations/identity.hpp"
#include "core/error.hpp"
#include "core/finite.hpp"
#include "core/parallel.hpp"
#include "core/types.hpp"
#include "core/random.hpp"
#include "core/state_stream.hpp"
#include "layers/architecture.hpp"
#include "layers/layer.hpp"
#include "layers/init.hpp"
#include "losses/concept.hpp"
#include "losses/softmax_cross_entropy.hpp"  // the default loss of mlp

namespace bilevel {

/// Pre-activations a_1..a_L and activations z_0..z_L of one batch (index k-1 for a_k, k for z_k).
/// Buffers are reused across batches of the same size.
template <Scalar S>
struct forward_state {
  std::vector<Matrix<S>> a;
  std::vector<Matrix<S>> z;
};

template <Scalar S, class Loss, class... Pairs>
class program {
  static_assert((ActivationPair<Pairs, S> && ...),
                "bilevel::program: every activation pair must satisfy ActivationPair<P, S>: "
                "members name(), f, df, G, G_conj over S (see activations/concept.hpp)");
  static_assert(OuterLoss<Loss, S>,
                "bilevel::program: the loss must satisfy OuterLoss<L, S>: members name(), "
                "value<S>(z, y) and gradient<S>(z, y, g) (see losses/concept.hpp)");

 public:
  using scalar_type = S;
  using loss_type = Loss;
  using layer_type = program_layer<S, Pairs...>;
  using pair_type = typename layer_type::pair_type;

  /// A multilayer perceptron: `sizes` = n_0, n_1, ..., n_L (input size first), dense layers;
  /// `pairs` = the activation of layers 1..L.
  program(const std::vector<Index>& sizes, std::vector<pair_type> pairs, Loss loss = {})
      : program(flat_input(sizes), dense_layers(sizes), std::move(pairs), std::move(loss)) {}

  /// Layers `maps` (layers/architecture.hpp) on inputs of shape `input`, each followed by its
  /// pair. Throws shape_error, naming the layer and both shapes, when a layer does not fit the
  /// image below it, and config_error for bad sizes or counts.
  program(const image_shape& input, std::vector<map_spec> maps, std::vector<pair_type> pairs,
          Loss loss = {})
      : input_shape_(input), maps_(std::move(maps)), loss_(std::move(loss)) {
    detail::require_image_shape("program", "the input shape", input);
    detail::require(!maps_.empty(), "program", "the number of layers", "at least 1", 0);
    const Index depth = Index(maps_.size());
    detail::require(Index(pairs.size()) == depth, "program", "the number of activation pairs",
                    detail::parts("one per layer (", depth, ")"), pairs.size());
    std::vector<layer_map<S>> built;
    Index weight_total = 0, bias_total = 0;
    image_shape shape = input;
    for (Index k = 0; k < depth; ++k) {
      built.push_back(make_map<S>(maps_[std::size_t(k)], shape, k + 1));
      const layer_map<S>& map = built.back();
      std::visit(
          [&](const auto& typed) {
            if constexpr (parameterized_map<std::decay_t<decltype(typed)>>) {
              weight_total = detail::checked_size("program", "the number of weights",
                                                  weight_total, typed.weight_rows(),
                                                  typed.weight_cols());
              bias_total = detail::checked_size("program", "the number of biases", bias_total,
                                                1, typed.bias_size());
            }
          },
          map);
      shape = output_shape<S>(map);
    }
    const Index parameter_total =
        detail::checked_size("program", "the number of parameters", weight_total, 1, bias_total);
    detail::checked_size("program", "the parameters' bytes", 0, parameter_total, sizeof(S));
    Index weight_offset = 0, bias_offset = weight_total;
    for (Index k = 0; k < depth; ++k) {
      const auto i = std::size_t(k);
      layers_.emplace_back(std::move(built[i]), std::move(pairs[i]), weight_offset, bias_offset);
      weight_offset += layers_.back().weight_rows() * layers_.back().weight_cols();
      bias_offset += layers_.back().bias_size();
    }
    weight_count_ = weight_total;
    try {
      parameters_ = Vector<S>::Zero(parameter_total);
    } catch (const std::bad_alloc&) {
      throw config_error(detail::concat("program: cannot allocate its ", parameter_total,
                                        " parameters (",
                                        double(parameter_total) * double(sizeof(S)) / 1e9, " GB)"));
    }
  }

  Index depth() const { return Index(layers_.size()); }
  Index input_size() const { return layers_.front().inputs(); }
  Index output_size() const { return layers_.back().outputs(); }
  /// Layer k = 1..L is layer(k - 1).
  const layer_type& layer(Index index) const { return layers_[std::size_t(index)]; }
  const std::vector<layer_type>& layers() const { return layers_; }
  const Loss& loss() const { return loss_; }
  /// The shape of an input image (n_0 x 1 x 1 for a perceptron) and the layers' maps as data.
  const image_shape& input_shape() const { return input_shape_; }
  const std::vector<map_spec>& maps() const { return maps_; }
  /// Whether every layer is dense (a perceptron, whatever its input's shape).
  bool dense_only() const {
    for (const map_spec& spec : maps_)
      if (!std::holds_alternative<dense_spec>(spec)) return false;
    return true;
  }

  Vector<S>& parameters() { return parameters_; }
  const Vector<S>& parameters() const { return parameters_; }
  Index parameter_count() const { return parameters_.size(); }
  /// Length of the weight prefix of the flat buffer (the part weight decay applies to).
  Index weight_count() const { return weight_count_; }

  MatrixMap<S> weights(Index index) { return layer(index).weights(parameters_); }
  ConstMatrixMap<S> weights(Index index) const { return layer(index).weights(parameters_); }
  VectorMap<S> bias(Index index) { return layer(index).bias(parameters_); }
  ConstVectorMap<S> bias(Index index) const { return layer(index).bias(parameters_); }

  /// The structure (loss, layer sizes, each layer's pair name and hyperparameters; the input
  /// shape and the maps when a layer is not dense) and the parameters. User-defined pairs are
  /// saved by their name(): no closed list of types. A perceptron's state is what it was
  /// before programs had other maps, so older checkpoints still load.
  void save_state(state_writer& out) const {
    write_structure_tag(out);
    out.write_text(loss_.name());
    out.write_u64(layers_.size() + 1);
    out.write_index(input_size());
    for (const layer_type& layer : layers_) out.write_index(layer.outputs());
    for (const layer_type& layer : layers_) {
      layer.visit([&](const auto& pair) {
        out.write_text(pair.name());
        if constexpr (detail::has_hyperparameters<std::decay_t<decltype(pair)>>)
          out.write_values(pair.hyperparameters());
        else
          out.write_values(std::vector<double>{});
      });
    }
    out.write_values<S>(parameters_);
  }

  /// Restores what save_state wrote into a program of the same structure: the loss, the sizes
  /// and the pairs' names must match; pair hyperparameters and the parameters are taken over.
  /// Throws data_error (and changes nothing) on any mismatch or non-finite parameter.
  void load_state(state_reader& in) {
    read_structure_tag(in);
    in.expect_text(loss_.name(), "loss");
    const Index count = in.read_index("number of layer sizes", 2, std::numeric_limits<Index>::max());
    std::vector<Index> sizes(1, input_size());
    for (const layer_type& layer : layers_) sizes.push_back(layer.outputs());
    if (count != Index(sizes.size())) in.fail("number of layer sizes", sizes.size(), count);
    for (std::size_t k = 0; k < sizes.size(); ++k)
      in.read_index(detail::concat("size of layer ", k), sizes[k], sizes[k]);
    std::vector<pair_type> pairs;
    for (Index k = 0; k < depth(); ++k) {
      pair_type pair = layer(k).pair();
      std::visit(
          [&](auto& typed) {
            const std::string where = detail::concat("activation of layer ", k + 1);
            in.expect_text(typed.name(), where);
            const std::vector<double> values =
                in.read_double_list(detail::concat(where, " hyperparameters"));
            if constexpr (detail::has_hyperparameters<std::decay_t<decltype(typed)>>)
              in.validate(where, [&] { typed.set_hyperparameters(values); });
            else if (!values.empty())
              in.fail(detail::concat(where, " hyperparameters"), "none", values.size());
          },
          pair);
      pairs.push_back(std::move(pair));
    }
    Vector<S> parameters = in.read_values<S>("parameters", parameter_count());
    if (!all_finite(parameters)) in.fail("parameters", "finite", "a NaN or Inf entry");
    for (Index k = 0; k < depth(); ++k) layers_[std::size_t(k)].set_pair(std::move(pairs[std::size_t(k)]));
    parameters_ = std::move(parameters);
  }

  /// Draws every layer's W and b by `scheme`, layer 1 first (deterministic given the source);
  /// each layer is told its index, which negative_first_layer needs.
  void initialize(init_scheme scheme, random_source& random) {
    for (Index k = 0; k < depth(); ++k) layer(k).initialize(scheme, parameters_, random, k);
  }

  /// A zero buffer with the layout of the parameters (for gradients).
  Vector<S> zero_like_parameters() const { return Vector<S>::Zero(parameter_count()); }

  /// Forward pass: a_k = A_k z_{k-1} + b_k, z_k = f_k(a_k), with z_0 = x.
  void forward(const MatrixCRef<S>& x, forward_state<S>& state) const {
    detail::require_sample_columns("program::forward", "x", input_size(), x.rows(), x.cols());
    const std::size_t L = layers_.size();
    state.a.resize(L);
    state.z.resize(L + 1);
    state.z[0] = x;
    for (std::size_t k = 0; k < L; ++k) {
      affine(Index(k), state.z[k], state.a[k]);
      state.z[k + 1].resize(state.a[k].rows(), state.a[k].cols());
      layers_[k].visit([&](const auto& pair) { activate<S>(pair, state.a[k], state.z[k + 1]); });
    }
  }

  /// The maps of layer index `index` (0-based) with this program's parameters; an output given
  /// as a Matrix is resized, one given as a view must have the right shape.
  /// a = A z_prev + b:
  void affine(Index index, const MatrixCRef<S>& z_prev, Matrix<S>& a) const {
    a.resize(layer(index).outputs(), z_prev.cols());
    layer(index).apply(parameters_, z_prev, a);
  }
  void affine(Index index, const MatrixCRef<S>& z_prev, MatrixRef<S> a) const {
    layer(index).apply(parameters_, z_prev, a);
  }
  /// out = A x (no bias: the map of a direction or a difference):
  void linear(Index index, const MatrixCRef<S>& x, Matrix<S>& out) const {
    out.resize(layer(index).outputs(), x.cols());
    layer(index).apply_linear(parameters_, x, out);
  }
  void linear(Index index, const MatrixCRef<S>& x, MatrixRef<S> out) const {
    layer(index).apply_linear(parameters_, x, out);
  }
  /// out = scale A^T g (the vector-Jacobian product of the map), or out += that with
  /// output_mode::add (then `out` must have its shape already):
  void transpose(Index index, const MatrixCRef<S>& g, Matrix<S>& out, S scale = S(1),
                 output_mode mode = output_mode::assign) const {
    if (mode == output_mode::assign) out.resize(layer(index).inputs(), g.cols());
    layer(index).apply_transpose(parameters_, g, out, scale, mode);
  }
  void transpose(Index index, const MatrixCRef<S>& g, MatrixRef<S> out, S scale = S(1),
                 output_mode mode = output_mode::assign) const {
    layer(index).apply_transpose(parameters_, g, out, scale, mode);
  }

  /// Throws unless y holds valid targets for the loss (its check_targets, when it has one: the
  /// built-in losses do), naming `function`.
  void check_targets(const MatrixCRef<S>& y, std::string_view function) const {
    if constexpr (requires { loss_.template check_targets<S>(y, function); })
      loss_.template check_targets<S>(y, function);
  }

  /// Per-sample outer loss l(z_L, y).
  RowVector<S> loss_values(const MatrixCRef<S>& z_out, const MatrixCRef<S>& y) const {
    RowVector<S> values;
    loss_values(z_out, y, values);
    return values;
  }

  /// The same into `out`, resized to 1 x B; without allocation after the first batch when the
  /// loss offers value(z, y, out) (the built-in losses do).
  void loss_values(const MatrixCRef<S>& z_out, const MatrixCRef<S>& y, RowVector<S>& out) const {
    out.resize(z_out.cols());
    loss_values(z_out, y, RowVectorRef<S>(out));
  }

  /// The same into a view of B values (the leading samples of a longer row, say).
  void loss_values(const MatrixCRef<S>& z_out, const MatrixCRef<S>& y, RowVectorRef<S> out) const {
    detail::require_shape("program::loss_values", "y", z_out.rows(), z_out.cols(), y.rows(),
                          y.cols());
    detail::require(out.size() == z_out.cols(), "program::loss_values", "values",
                    z_out.cols(),
                    out.size());
    if constexpr (requires { loss_.template value<S>(z_out, y, Eigen::Ref<RowVector<S>>(out)); }) {
      detail::parallel_columns(z_out.rows(), z_out.cols(), [&](Index first, Index count) {
        loss_.template value<S>(z_out.middleCols(first, count), y.middleCols(first, count),
                                out.segment(first, count));
      });
    } else {
      out = loss_.template value<S>(z_out, y);
    }
  }

  /// Per-sample change of the outer loss, l(z_L + h, y) - l(z_L, y), into a view of B values:
  /// the loss's own change(z, h, y, out) where it offers one (the built-in losses do: written in
  /// h, it keeps its digits when h is small), else the difference of two values.
  void loss_change(const MatrixCRef<S>& z_out, const MatrixCRef<S>& h, const MatrixCRef<S>& y,
                   RowVectorRef<S> out) const {
    detail::require_shape("program::loss_change", "h", z_out.rows(), z_out.cols(), h.rows(),
                          h.cols());
    if constexpr (requires {
                    loss_.template change<S>(z_out, h, y, Eigen::Ref<RowVector<S>>(out));
                  }) {
      detail::require_shape("program::loss_change", "y", z_out.rows(), z_out.cols(), y.rows(),
                            y.cols());
      detail::require(out.size() == z_out.cols(), "program::loss_change", "values",
                      z_out.cols(), out.size());
      loss_.template change<S>(z_out, h, y, out);
    } else {
      const Matrix<S> moved = z_out + h;
      loss_values(moved, y, out);
      out -= loss_values(z_out, y);
    }
  }

  /// Per-sample gradient dl/dz_L into `g` (n_L x B, already sized); in blocks of columns in
  /// parallel where that pays (core/parallel.hpp) when the loss writes into a MatrixRef.
  void loss_gradient(const MatrixCRef<S>& z_out, const MatrixCRef<S>& y, Matrix<S>& g) const {
    if constexpr (requires { loss_.template gradient<S>(z_out, y, MatrixRef<S>(g)); })
      loss_gradient(z_out, y, MatrixRef<S>(g));
    else
      loss_.template gradient<S>(z_out, y, g);
  }

  /// The same into a view (the leading samples of a longer buffer, say); a loss that writes
  /// only into a Matrix goes through a temporary there.
  void loss_gradient(const MatrixCRef<S>& z_out, const MatrixCRef<S>& y, MatrixRef<S> g) const {
    if constexpr (requires { loss_.template gradient<S>(z_out, y, g); }) {
      detail::parallel_columns(z_out.rows(), z_out.cols(), [&](Index first, Index count) {
        loss_.template gradient<S>(z_out.middleCols(first, count), y.middleCols(first, count),
                                   MatrixRef<S>(g.middleCols(first, count)));
      });
    } else {
      Matrix<S> full(g.rows(), g.cols());
      loss_.template gradient<S>(z_out, y, full);
      g = full;
    }
  }

  /// Per-sample inner objectives E_k(z_k, z_{k-1}) under `Coupling` (docs/methods.md §3) for a state
  /// z_0..z_L: row k-1 holds layer k's energies, one column per sample.
  template <class Coupling>
  Matrix<S> layer_energies(const std::vector<Matrix<S>>& z) const {
    detail::require(z.size() == layers_.size() + 1, "program::layer_energies",
                    "the number of states", layers_.size() + 1, z.size());
    Matrix<S> energies(depth(), z[0].cols());
    Matrix<S> a;
    for (Index k = 0; k < depth(); ++k) {
      affine(k, z[std::size_t(k)], a);
      layer(k).visit([&](const auto& pair) {
        energies.row(k) = Coupling::template value<S>(pair, z[std::size_t(k + 1)], a);
      });
    }
    return energies;
  }

 private:
  static image_shape flat_input(const std::vector<Index>& sizes) {
    detail::require(sizes.size() >= 2, "program", "the number of layer sizes", "at least 2",
                    sizes.size());
    detail::require(sizes[0] > 0, "program", "layer size 0", "> 0", sizes[0]);
    return {sizes[0], 1, 1};
  }

  static std::vector<map_spec> dense_layers(const std::vector<Index>& sizes) {
    std::vector<map_spec> maps;
    for (std::size_t k = 1; k < sizes.size(); ++k) {
      detail::require(sizes[k] > 0, "program", detail::parts("layer size ", k), "> 0", sizes[k]);
      maps.emplace_back(dense_spec{sizes[k]});
    }
    return maps;
  }

  /// "program" for a perceptron (the layer sizes that follow say it all), else "image program",
  /// the input shape and the maps in the grammar of layers/architecture.hpp.
  void write_structure_tag(state_writer& out) const {
    if (dense_only()) {
      out.write_text("program");
      return;
    }
    out.write_text("image program");
    out.write_text(input_shape_.text());
    out.write_text(describe(maps_));
  }

  void read_structure_tag(state_reader& in) {
    if (dense_only()) {
      in.expect_text("program", "component");
      return;
    }
    in.expect_text("image program", "component");
    in.expect_text(input_shape_.text(), "input shape");
    in.expect_text(describe(maps_), "layers");
  }

  image_shape input_shape_;
  std::vector<map_spec> maps_;
  std::vector<layer_type> layers_;
  Loss loss_;
  Vector<S> parameters_;
  Index weight_count_ = 0;
};

/// The usual classifier: hidden layers with pair `Hidden`, an identity output layer whose values
/// the loss reads as logits (softmax cross-entropy by default).
template <Scalar S, class Hidden, class Loss = softmax_cross_entropy>
using mlp = program<S, Loss, Hidden, identity>;

template <Scalar S, class Hidden, class Loss = softmax_cross_entropy>
mlp<S, Hidden, Loss> make_mlp(const std::vector<Index>& sizes, Hidden hidden = {},
                              Loss loss = {}) {
  using pair_type = typename mlp<S, Hidden, Loss>::pair_type;
  detail::require(sizes.size() >= 2, "make_mlp", "the number of layer sizes", "at least 2",
                  sizes.size());
  std::vector<pair_type> pairs(sizes.size() - 2, pair_type(hidden));
  pairs.emplace_back(identity{});
  return mlp<S, Hidden, Loss>(sizes, std::move(pairs), std::move(loss));
}

/// The usual classifier of images of shape `input` through the layers `maps`: `hidden` after
/// every convolution and dense layer, the identity after each pooling (a linear map needs none)
/// and at the output, whose values the loss reads as logits. Throws as the program constructor.
template <class Program>
Program make_classifier(const image_shape& input, std::vector<map_spec> maps,
                        const typename Program::pair_type& hidden,
                        typename Program::loss_type loss = {}) {
  using pair_type = typename Program::pair_type;
  std::vector<pair_type> pairs;
  for (std::size_t k = 0; k < maps.size(); ++k) {
    const bool linear = k + 1 == maps.size() || std::holds_alternative<pool_spec>(maps[k]);
    pairs.push_back(linear ? pair_type(identity{}) : hidden);
  }
  return Program(input, std::move(maps), std::move(pairs), std::move(loss));
}

}  // namespace bilevel
