#pragma once
// The programs, methods and optimizers the Python module holds: one program type per scalar
// with every built-in activation pair as a per-layer choice, and the typed operations on them,
// compiled once per scalar in a translation unit of its own (typed_float.cpp, typed_double.cpp).

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "bilevel/bilevel.hpp"
#include "python_pair.hpp"

namespace bilevel::python {

/// Any built-in pair or a pair written in Python on any layer (a per-layer choice, not a
/// per-element one), softmax cross-entropy on the last layer's values.
template <Scalar S>
using network = program<S, softmax_cross_entropy, relu, leaky_relu, hard_sigmoid, hard_tanh,
                        sigmoid, tanh_pair, softmax, identity, python_pair>;

/// The hidden layers' pair: a built-in one by name, or a Python pair when `python` is set.
struct hidden_pair {
  std::string name;
  activation_options options;
  std::shared_ptr<python_functions> python;
};

/// What bilevel.train passes on to the run loop.
struct train_settings {
  Index epochs = 1;
  Index batch = 50;
  std::uint64_t seed = 0;  ///< the shuffling's
  step_mode mode = step_mode::gradient;
  bool evaluate_train = false;
  bool flush_denormals = true;
};

template <Scalar S>
struct typed_ops {
  static network<S> mlp(const std::vector<Index>& sizes, const hidden_pair& hidden);
  static network<S> classifier(const image_shape& input, const std::string& architecture,
                               const hidden_pair& hidden);
  static void initialize(network<S>& net, const std::string& scheme, std::uint64_t seed);

  static any_method<S> method(const std::string& name, const method_options& options,
                              Index depth);
  static step_report gradient(any_method<S>& method, const network<S>& net,
                              const MatrixCRef<S>& x, const MatrixCRef<S>& y, Vector<S>& g);
  static step_report train_step(any_method<S>& method, network<S>& net, const MatrixCRef<S>& x,
                                const MatrixCRef<S>& y);
  /// By `method`'s prediction, or the forward pass without one.
  static void predict(any_method<S>* method, const network<S>& net, const MatrixCRef<S>& x,
                      Matrix<S>& output);

  /// `batch_done` runs after every batch (the module checks for Ctrl-C there).
  static void train(network<S>& net, any_method<S>& method, any_optimizer<S>& optimizer,
                    const run_data<S>& data, const train_settings& settings,
                    const std::function<void(const epoch_result&)>& epoch_finished,
                    const std::function<void()>& batch_done);

  /// The network and whichever of the others are given (not null), in this order.
  static void save(const std::filesystem::path& path, const network<S>& net,
                   const any_optimizer<S>* optimizer, const any_method<S>* method);
  static void load(const std::filesystem::path& path, network<S>& net,
                   any_optimizer<S>* optimizer, any_method<S>* method);
  static void export_npy(const std::filesystem::path& directory, const network<S>& net);
  static void import_npy(const std::filesystem::path& directory, network<S>& net);
};

extern template struct typed_ops<float>;
extern template struct typed_ops<double>;

}  // namespace bilevel::python
