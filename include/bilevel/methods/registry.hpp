#pragma once
/// \file
/// Methods by name: `make_method<S>("chl", options, depth)` builds any built-in method from one
/// bag of settings, so that a program choosing its method at run time (a command line, a sweep)
/// needs no list of its own. Each entry names the options it reads; an option an entry does
/// not read keeps no meaning for that method (tools can warn about it, as the MNIST trainer
/// does). Adding a method: its header, its tests, its alternative in any_method and its entry
/// in method_registry.

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "any_method.hpp"

namespace bilevel {

/// Settings a method may read when it is made by name. An unset field keeps the method's own
/// default (docs/methods.md §5, §7); the comment after each field names the methods that
/// read it (method_entry::reads lists them per method).
struct method_options {
  /// fenbp: one value or one per layer; chl, ep, pcn: one.
  std::vector<double> beta = {};
  std::optional<double> gamma = std::nullopt;  ///< chl: feedback discount
  std::vector<double> lambda = {};             ///< lpom, fln: one value or one per layer
  std::optional<double> mu = std::nullopt;     ///< mac, altmin: penalty weight
  std::optional<double> mu_growth = std::nullopt;  ///< mac: factor on mu after every step
  /// The inner solver's cap (ep: its free steps; altmin: its code steps).
  std::optional<Index> inner_iterations = std::nullopt;
  std::optional<double> inner_step = std::nullopt;  ///< ep, pcn, altmin: the inner step size
  std::optional<double> tolerance = std::nullopt;   ///< chl, pcn, mac, lpom, fln; ep converged
  std::optional<inner_start> start = std::nullopt;  ///< chl, pcn, mac, lpom, fln
  /// chl, lpom, fln: the cap on the extrapolation factor between sweeps (0: plain sweeps).
  std::optional<double> extrapolation = std::nullopt;
  std::optional<pcn_inference> inference = std::nullopt;  ///< pcn: plain, momentum or anderson
  std::optional<Index> nudged_iterations = std::nullopt;  ///< ep
  bool one_sided = false;            ///< ep: one nudged phase of random sign
  bool converged = false;            ///< ep: relax each phase to the stopping rule
  Index particles = 0;               ///< ep: persistent states for this many examples
  std::vector<double> layer_scales = {};  ///< ep: per-layer factors on the weight steps
  std::optional<std::uint64_t> seed = std::nullopt;    ///< ep: the sign draws of one_sided
  std::optional<double> learning_rate = std::nullopt;  ///< altmin: its weight optimizer's rate
};

template <Scalar S>
struct method_entry {
  std::string_view name;
  std::string_view description;
  /// The method_options fields this method reads, by their member names.
  std::vector<std::string_view> reads;
  /// Builds the method for a program of `depth` layers from `options`.
  any_method<S> (*make)(const method_options& options, Index depth);
};

namespace detail {

/// The single spacing of a method that takes one (`name` names the method in the error).
inline double single_beta(const method_options& options, std::string_view name,
                          double fallback) {
  if (options.beta.empty()) return fallback;
  require(options.beta.size() == 1, "make_method", parts("beta for ", name), "a single value",
          parts(options.beta.size(), " values"));
  return options.beta.front();
}

template <Scalar S>
std::vector<S> as_scalars(const std::vector<double>& values) {
  return std::vector<S>(values.begin(), values.end());
}

template <Scalar S>
any_method<S> make_lifted(const method_options& o, bool fln_variant) {
  auto settings = fln_variant ? fln<S>::default_settings() : lifted_settings<S>{};
  if (!o.lambda.empty()) settings.lambda.assign(o.lambda.begin(), o.lambda.end());
  if (o.inner_iterations) settings.stopping.max_iterations = *o.inner_iterations;
  if (o.tolerance) settings.stopping.tolerance = S(*o.tolerance);
  if (o.start) settings.start = *o.start;
  if (o.extrapolation) settings.extrapolation = S(*o.extrapolation);
  if (fln_variant) return fln<S>(settings);
  return lpom<S>(settings);
}

}  // namespace detail

/// Every built-in method, in the order of docs/methods.md §5.
template <Scalar S>
const std::vector<method_entry<S>>& method_registry() {
  using O = const method_options&;
  static const std::vector<method_entry<S>> entries = {
      {"bp", "back-propagation", {}, [](O, Index) -> any_method<S> { return bp<S>(); }},
      {"fenbp", "Fenchel back-propagation (§5.1)", {"beta"},
       [](O o, Index depth) -> any_method<S> {
         if (o.beta.empty()) return fenchel_bp<S>(S(0.01));  // fenchel_bp has no default
         // depth 0: not known here; fenchel_bp checks the count against the program it meets.
         detail::require(o.beta.size() == 1 || depth == 0 || Index(o.beta.size()) == depth,
                         "make_method",
                         "the number of fenbp beta values",
                         detail::parts("1 or one per layer (", depth, ")"), o.beta.size());
         return fenchel_bp<S>(detail::as_scalars<S>(o.beta));
       }},
      {"chl", "contrastive Hebbian learning (§5.2)",
       {"beta", "gamma", "inner_iterations", "tolerance", "start", "extrapolation"},
       [](O o, Index) -> any_method<S> {
         typename chl<S>::settings s;
         s.beta = S(detail::single_beta(o, "chl", double(s.beta)));
         if (o.gamma) s.gamma = S(*o.gamma);
         if (o.inner_iterations) s.stopping.max_iterations = *o.inner_iterations;
         if (o.tolerance) s.stopping.tolerance = S(*o.tolerance);
         if (o.start) s.start = *o.start;
         if (o.extrapolation) s.extrapolation = S(*o.extrapolation);
         return chl<S>(s);
       }},
      {"ep", "equilibrium propagation (§5.3)",
       {"beta", "inner_iterations", "inner_step", "tolerance", "nudged_iterations", "one_sided",
        "converged", "particles", "layer_scales", "seed"},
       [](O o, Index) -> any_method<S> {
         typename ep<S>::settings s;
         s.beta = S(detail::single_beta(o, "ep", double(s.beta)));
         if (o.inner_iterations) s.free_iterations = *o.inner_iterations;
         if (o.inner_step) s.step = S(*o.inner_step);
         if (o.nudged_iterations) s.nudged_iterations = *o.nudged_iterations;
         s.symmetric = !o.one_sided;
         s.random_sign = o.one_sided;
         if (o.seed) s.seed = *o.seed;
         if (o.converged) {
           s.mode = ep<S>::relaxation::converged;
           for (auto* phase : {&s.free_stopping, &s.nudged_stopping}) {
             if (o.tolerance) phase->tolerance = S(*o.tolerance);
             if (o.inner_iterations) phase->max_iterations = *o.inner_iterations;
           }
         }
         s.particles = o.particles;
         s.layer_scales = detail::as_scalars<S>(o.layer_scales);
         return ep<S>(s);
       }},
      {"pcn", "predictive coding (§5.4)",
       {"beta", "inner_iterations", "inner_step", "tolerance", "start", "inference"},
       [](O o, Index) -> any_method<S> {
         typename pcn<S>::settings s;
         s.spacing = S(detail::single_beta(o, "pcn", double(s.spacing)));
         if (o.inner_iterations) s.stopping.max_iterations = *o.inner_iterations;
         if (o.inner_step) s.inference_rate = S(*o.inner_step);
         if (o.tolerance) s.stopping.tolerance = S(*o.tolerance);
         if (o.start) s.start = *o.start;
         if (o.inference) s.inference = *o.inference;
         return pcn<S>(s);
       }},
      {"zil", "Z-IL: predictive coding that equals BP (§5.4)", {},
       [](O, Index) -> any_method<S> { return pcn<S>(pcn<S>::zil()); }},
      {"mac", "method of auxiliary coordinates (§5.5)",
       {"mu", "mu_growth", "inner_iterations", "tolerance", "start"},
       [](O o, Index) -> any_method<S> {
         typename mac<S>::settings s;
         if (o.mu) s.mu = S(*o.mu);
         if (o.mu_growth) s.mu_growth = S(*o.mu_growth);
         if (o.inner_iterations) s.z_stopping.max_iterations = *o.inner_iterations;
         if (o.tolerance) s.z_stopping.tolerance = S(*o.tolerance);
         if (o.start) s.start = *o.start;
         return mac<S>(s);
       }},
      {"lpom", "lifted proximal operator machines (§5.6)",
       {"lambda", "inner_iterations", "tolerance", "start", "extrapolation"},
       [](O o, Index) { return detail::make_lifted<S>(o, false); }},
      {"fln", "Fenchel lifted networks (§5.6)",
       {"lambda", "inner_iterations", "tolerance", "start", "extrapolation"},
       [](O o, Index) { return detail::make_lifted<S>(o, true); }},
      {"altmin", "online alternating minimisation (§5.7)",
       {"mu", "inner_iterations", "inner_step", "learning_rate"},
       [](O o, Index) -> any_method<S> {
         typename altmin<S>::settings s;
         if (o.mu) s.mu = S(*o.mu);
         if (o.inner_iterations) s.code_iterations = *o.inner_iterations;
         if (o.inner_step) s.code_rate = S(*o.inner_step);
         if (o.learning_rate) s.optimizer.learning_rate = S(*o.learning_rate);
         return altmin<S>(s);
       }}};
  return entries;
}

/// The registered names, in registry order.
template <Scalar S = float>
std::vector<std::string> method_names() {
  std::vector<std::string> names;
  for (const auto& entry : method_registry<S>()) names.emplace_back(entry.name);
  return names;
}

/// The registry entry called `name`; config_error listing the registered names otherwise.
template <Scalar S>
const method_entry<S>& find_method(std::string_view name) {
  const auto& entries = method_registry<S>();
  const auto found = std::find_if(entries.begin(), entries.end(),
                                  [&](const method_entry<S>& entry) { return entry.name == name; });
  if (found == entries.end()) {
    std::string known;
    for (const auto& entry : entries)
      known += detail::concat(known.empty() ? "" : ", ", entry.name);
    throw config_error(detail::concat("make_method: unknown method \"", name,
                                      "\" (registered: ", known, ")"));
  }
  return *found;
}

/// Whether the method called `name` reads the method_options field called `option`.
template <Scalar S = float>
bool method_reads(std::string_view name, std::string_view option) {
  const auto& reads = find_method<S>(name).reads;
  return std::find(reads.begin(), reads.end(), option) != reads.end();
}

/// The method called `name` for a program of `depth` layers, with `options` over its defaults.
template <Scalar S>
any_method<S> make_method(std::string_view name, const method_options& options = {},
                          Index depth = 0) {
  return find_method<S>(name).make(options, depth);
}

}  // namespace bilevel
