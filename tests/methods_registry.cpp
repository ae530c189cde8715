// The method registry (methods/registry.hpp) and the activation registry
// (activations/registry.hpp): names, the options each method reads, errors.
#include <catch2/catch.hpp>

#include <string>
#include <tuple>
#include <vector>

#include "bilevel/activations/registry.hpp"
#include "bilevel/methods/registry.hpp"
#include "helpers.hpp"

using namespace bilevel;
using Catch::Contains;

namespace {

/// Every option set to a value unlike any method's default.
method_options unusual_options() {
  method_options o;
  o.beta = {0.3};
  o.gamma = 0.7;
  o.lambda = {3};
  o.mu = 2.5;
  o.mu_growth = 1.5;
  o.inner_iterations = 3;
  o.inner_step = 0.02;
  o.tolerance = 0.3;
  o.start = inner_start::first_order;
  o.extrapolation = 0.0;
  o.nudged_iterations = 2;
  o.one_sided = true;
  o.inference = pcn_inference::momentum;
  o.converged = true;
  o.particles = 6;
  o.layer_scales = {0.5, 2, 1};
  o.seed = 99;
  o.learning_rate = 0.05;
  return o;
}

/// `options` with only the fields named by `keep(field)` set; the others at their defaults.
template <class Keep>
method_options only(const method_options& options, Keep keep) {
  method_options o;
  if (keep("beta")) o.beta = options.beta;
  if (keep("gamma")) o.gamma = options.gamma;
  if (keep("lambda")) o.lambda = options.lambda;
  if (keep("mu")) o.mu = options.mu;
  if (keep("mu_growth")) o.mu_growth = options.mu_growth;
  if (keep("inner_iterations")) o.inner_iterations = options.inner_iterations;
  if (keep("inner_step")) o.inner_step = options.inner_step;
  if (keep("tolerance")) o.tolerance = options.tolerance;
  if (keep("start")) o.start = options.start;
  if (keep("extrapolation")) o.extrapolation = options.extrapolation;
  if (keep("nudged_iterations")) o.nudged_iterations = options.nudged_iterations;
  if (keep("one_sided")) o.one_sided = options.one_sided;
  if (keep("inference")) o.inference = options.inference;
  if (keep("converged")) o.converged = options.converged;
  if (keep("particles")) o.particles = options.particles;
  if (keep("layer_scales")) o.layer_scales = options.layer_scales;
  if (keep("seed")) o.seed = options.seed;
  if (keep("learning_rate")) o.learning_rate = options.learning_rate;
  return o;
}

/// The method's gradient on a fixed small problem (3 layers of hard sigmoids, which every
/// method accepts).
Vector<double> gradient_of(any_method<double> method) {
  random_source random(17);
  auto net = make_mlp<double, hard_sigmoid>({4, 6, 5, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = testing::random_matrix<double>(random, 4, 6);
  const Matrix<double> y = testing::random_one_hot<double>(random, 3, 6);
  const std::vector<Index> samples = {0, 1, 2, 3, 4, 5};
  Vector<double> gradient;
  method.gradient(net, x, y, samples, gradient);
  return gradient;
}

}  // namespace

TEST_CASE("the registry makes every method by its name", "[registry]") {
  const auto names = method_names();
  CHECK(names == std::vector<std::string>{"bp", "fenbp", "chl", "ep", "pcn", "zil", "mac", "lpom",
                                          "fln", "altmin"});
  for (const std::string& name : names) {
    CAPTURE(name);
    const any_method<float> method = make_method<float>(name);
    CHECK(method.name() == name);
    CHECK(method.has_native_step() ==
          (name == "mac" || name == "lpom" || name == "fln" || name == "altmin"));
  }
}

TEST_CASE("a made method is the method its settings describe", "[registry]") {
  // The registry's defaults are the methods' own: same gradients, bit for bit.
  CHECK(gradient_of(make_method<double>("chl")) == gradient_of(chl<double>()));
  CHECK(gradient_of(make_method<double>("mac")) == gradient_of(mac<double>()));
  CHECK(gradient_of(make_method<double>("fln")) == gradient_of(fln<double>()));
  CHECK(gradient_of(make_method<double>("pcn")) == gradient_of(pcn<double>()));
  CHECK(gradient_of(make_method<double>("zil")) == gradient_of(pcn<double>(pcn<double>::zil())));
  // Options land in the fields they name.
  chl<double>::settings chl_settings;
  chl_settings.beta = 0.3;
  chl_settings.gamma = 0.7;
  chl_settings.stopping.max_iterations = 3;
  method_options chl_options;
  chl_options.beta = {0.3};
  chl_options.gamma = 0.7;
  chl_options.inner_iterations = 3;
  CHECK(gradient_of(make_method<double>("chl", chl_options)) ==
        gradient_of(chl<double>(chl_settings)));
  lifted_settings<double> lpom_settings;
  lpom_settings.lambda = {3};
  lpom_settings.start = inner_start::first_order;
  method_options lpom_options;
  lpom_options.lambda = {3};
  lpom_options.start = inner_start::first_order;
  CHECK(gradient_of(make_method<double>("lpom", lpom_options)) ==
        gradient_of(lpom<double>(lpom_settings)));
  CHECK(gradient_of(make_method<double>("fenbp", {.beta = {0.1, 0.2, 0.3}})) ==
        gradient_of(fenchel_bp<double>(std::vector<double>{0.1, 0.2, 0.3})));
}

TEST_CASE("each method reads exactly the options its entry lists", "[registry]") {
  const method_options all = unusual_options();
  for (const std::string& name : method_names()) {
    CAPTURE(name);
    // The options a method does not list change nothing: its gradient with every option set
    // equals its gradient with only the listed ones set.
    const auto listed = [&](std::string_view field) { return method_reads(name, field); };
    CHECK(gradient_of(make_method<double>(name, all, 3)) ==
          gradient_of(make_method<double>(name, only(all, listed), 3)));
    // Every listed option that acts within one gradient step changes it (mu_growth,
    // particles, seed and learning_rate act across steps; the trainer's tests cover them).
    for (const std::string_view option : find_method<double>(name).reads) {
      if (option == "mu_growth" || option == "particles" || option == "seed" ||
          option == "learning_rate")
        continue;
      CAPTURE(option);
      // EP reads its tolerance only in converged mode: compare within that mode. A start
      // shows where the solve is cut short.
      const bool ep_tolerance = name == "ep" && option == "tolerance";
      const auto base = [&](std::string_view field) {
        return (ep_tolerance && field == "converged") ||
               (option == "start" && field == "inner_iterations");
      };
      const auto single = [&](std::string_view field) { return field == option || base(field); };
      // The start unlike the method's default (LPOM and FLN start at first order).
      method_options varied = all;
      if (make_method<double>(name).inner_start_name() == "first-order")
        varied.start = inner_start::forward;
      CHECK(gradient_of(make_method<double>(name, only(varied, single), 3)) !=
            gradient_of(make_method<double>(name, only(varied, base), 3)));
    }
  }
}

TEST_CASE("the registry refuses unknown names and bad option counts, naming them",
          "[registry][reliability]") {
  CHECK_THROWS_AS(make_method<float>("backprop"), config_error);
  CHECK_THROWS_WITH(make_method<float>("backprop"),
                    Contains("unknown method \"backprop\"") && Contains("bp, fenbp, chl"));
  CHECK_THROWS_WITH(make_method<float>("chl", {.beta = {0.1, 0.2}}),
                    Contains("make_method") && Contains("beta for chl") &&
                        Contains("a single value") && Contains("2 values"));
  CHECK_THROWS_WITH(make_method<float>("fenbp", {.beta = {0.1, 0.2}}, 3),
                    Contains("one per layer (3)") && Contains("got 2"));
  CHECK_THROWS_AS(method_reads("hebbian", "beta"), config_error);
  any_method<float> bp_method = make_method<float>("bp");
  auto net = make_mlp<float, relu>({2, 2});
  const Matrix<float> x = Matrix<float>::Zero(2, 1);
  CHECK_THROWS_WITH(bp_method.train_step(net, x, x),
                    Contains("any_method::train_step") && Contains("bp has no training step"));
}

TEST_CASE("the activation registry calls back with the pair of each name", "[registry]") {
  for (const std::string_view name : activation_names) {
    CAPTURE(name);
    const std::string made = with_activation(name, {}, [](const auto& pair) {
      return std::string(pair.name());
    });
    CHECK(made == name);
  }
  const double slope = with_activation("leaky_relu", {.leaky_slope = 0.2}, [](const auto& pair) {
    if constexpr (requires { pair.slope; })
      return double(pair.slope);
    else
      return -1.0;
  });
  CHECK(slope == 0.2);
  CHECK_THROWS_WITH(with_activation("swish", {}, [](const auto&) { return 0; }),
                    Contains("with_activation: unknown pair \"swish\"") && Contains("relu, "));
}

TEST_CASE("the list of built-in pair types matches the registered names, in order",
          "[registry]") {
  STATIC_REQUIRE(std::tuple_size_v<builtin_pairs> == activation_names.size());
  const auto names = std::apply(
      [](const auto&... pair) { return std::vector<std::string>{std::string(pair.name())...}; },
      builtin_pairs{});
  CHECK(names == std::vector<std::string>(activation_names.begin(), activation_names.end()));
}
