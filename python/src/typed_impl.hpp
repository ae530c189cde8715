#pragma once
// The definitions of typed_ops (network.hpp), included by one translation unit per scalar.

#include "network.hpp"

namespace bilevel::python {

namespace detail_impl {

template <Scalar S>
typename network<S>::pair_type pair_of(const hidden_pair& hidden) {
  using pair_type = typename network<S>::pair_type;
  if (hidden.python) return pair_type(python_pair(hidden.python));
  return with_activation(hidden.name, hidden.options,
                         [](const auto& pair) { return pair_type(pair); });
}

}  // namespace detail_impl

template <Scalar S>
network<S> typed_ops<S>::mlp(const std::vector<Index>& sizes, const hidden_pair& hidden) {
  detail::require(sizes.size() >= 2, "mlp", "the number of layer sizes", "at least 2",
                  sizes.size());
  using pair_type = typename network<S>::pair_type;
  std::vector<pair_type> pairs(sizes.size() - 2, detail_impl::pair_of<S>(hidden));
  pairs.emplace_back(identity{});
  return network<S>(sizes, std::move(pairs));
}

template <Scalar S>
network<S> typed_ops<S>::classifier(const image_shape& input, const std::string& architecture,
                                    const hidden_pair& hidden) {
  return make_classifier<network<S>>(input, parse_architecture(architecture),
                                     detail_impl::pair_of<S>(hidden));
}

template <Scalar S>
void typed_ops<S>::initialize(network<S>& net, const std::string& scheme, std::uint64_t seed) {
  random_source random(seed);
  net.initialize(parse_init_scheme(scheme), random);
}

template <Scalar S>
any_method<S> typed_ops<S>::method(const std::string& name, const method_options& options,
                                   Index depth) {
  return make_method<S>(name, options, depth);
}

template <Scalar S>
step_report typed_ops<S>::gradient(any_method<S>& method, const network<S>& net,
                                   const MatrixCRef<S>& x, const MatrixCRef<S>& y, Vector<S>& g) {
  return method.gradient(net, x, y, g);
}

template <Scalar S>
step_report typed_ops<S>::train_step(any_method<S>& method, network<S>& net,
                                     const MatrixCRef<S>& x, const MatrixCRef<S>& y) {
  return method.train_step(net, x, y);
}

template <Scalar S>
void typed_ops<S>::predict(any_method<S>* method, const network<S>& net, const MatrixCRef<S>& x,
                           Matrix<S>& output) {
  if (method != nullptr) {
    method->predict(net, x, output);
    return;
  }
  forward_state<S> state;
  net.forward(x, state);
  output.swap(state.z.back());
}

template <Scalar S>
void typed_ops<S>::train(network<S>& net, any_method<S>& method, any_optimizer<S>& optimizer,
                         const run_data<S>& data, const train_settings& settings,
                         const std::function<void(const epoch_result&)>& epoch_finished,
                         const std::function<void()>& batch_done) {
  // The caller's floating-point mode is restored however the run ends.
  struct denormal_mode {
    bool before = denormals_flushed();
    explicit denormal_mode(bool flush) { flush_denormals(flush); }
    ~denormal_mode() { flush_denormals(before); }
  } mode(settings.flush_denormals);
  trainer loop(net, method, optimizer, settings.batch, settings.seed, settings.mode);
  run_settings run;
  run.epochs = settings.epochs;
  run.evaluate_train = settings.evaluate_train;
  run_record record;
  run_callbacks<S> callbacks;
  callbacks.epoch_finished = epoch_finished;
  callbacks.batch_done = [&batch_done](Index, Index, Index) { batch_done(); };
  run_epochs(loop, data, run, record, callbacks);
}

template <Scalar S>
void typed_ops<S>::save(const std::filesystem::path& path, const network<S>& net,
                        const any_optimizer<S>* optimizer, const any_method<S>* method) {
  if (optimizer && method) return save_checkpoint(path, net, *optimizer, *method);
  if (optimizer) return save_checkpoint(path, net, *optimizer);
  if (method) return save_checkpoint(path, net, *method);
  save_checkpoint(path, net);
}

template <Scalar S>
void typed_ops<S>::load(const std::filesystem::path& path, network<S>& net,
                        any_optimizer<S>* optimizer, any_method<S>* method) {
  if (optimizer && method) return load_checkpoint(path, net, *optimizer, *method);
  if (optimizer) return load_checkpoint(path, net, *optimizer);
  if (method) return load_checkpoint(path, net, *method);
  load_checkpoint(path, net);
}

template <Scalar S>
void typed_ops<S>::export_npy(const std::filesystem::path& directory, const network<S>& net) {
  bilevel::export_npy(directory, net);
}

template <Scalar S>
void typed_ops<S>::import_npy(const std::filesystem::path& directory, network<S>& net) {
  bilevel::import_npy(directory, net);
}

}  // namespace bilevel::python
