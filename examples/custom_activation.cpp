// custom_activation: an activation pair the library does not have, written in a few lines, checked
// by the numerical checker, and trained with Fenchel BP next to BP.
//
// The exponential linear unit (Clevert, Unterthiner & Hochreiter 2016) with alpha > 0,
//   f(a) = a (a >= 0),  alpha (e^a - 1) (a < 0),
// is the gradient of the convex potential
//   G(a) = a^2 / 2 (a >= 0),  alpha (e^a - 1 - a) (a < 0),
// whose conjugate (docs/methods.md §2), finite on the range [-alpha, inf) of f, is
//   G*(z) = z^2 / 2 (z >= 0),  (z + alpha) log(1 + z / alpha) - z (-alpha <= z < 0).
// Fenchel BP only needs f, G and G* (docs/methods.md §5.2); the checker verifies the Fenchel-Young
// inequality, f = G', the inverse map and the prox of G* numerically.
//
// The task: three interleaved spirals in the plane, which no linear model separates. Exit status
// 0 when the pair passes the checker and Fenchel BP trains the network to under 10% error.

#include <cmath>
#include <cstdio>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

#include "bilevel/bilevel.hpp"

namespace {

struct elu {
  double alpha = 1.0;

  std::string name() const { return "elu"; }
  template <class S> S f(S a) const { return a >= 0 ? a : S(alpha) * std::expm1(a); }
  template <class S> S df(S a) const { return a >= 0 ? S(1) : S(alpha) * std::exp(a); }
  template <class S> S G(S a) const {
    return a >= 0 ? a * a / 2 : S(alpha) * (std::expm1(a) - a);
  }
  template <class S> S G_conj(S z) const {
    if (z >= 0) return z * z / 2;
    if (z < -S(alpha)) return std::numeric_limits<S>::infinity();
    const S ratio = z / S(alpha);
    return ratio == S(-1) ? S(alpha) : (z + S(alpha)) * std::log1p(ratio) - z;
  }
  /// The inverse of f on its range: dG*(z).
  template <class S> S grad_conj(S z) const {
    return z >= 0 ? z : std::log1p(z / S(alpha));
  }
  /// alpha travels with checkpoints like the library's own leaky slope.
  std::vector<double> hyperparameters() const { return {alpha}; }
  void set_hyperparameters(const std::vector<double>& values) {
    bilevel::detail::require(values.size() == 1 && values[0] > 0, "elu::set_hyperparameters",
                             "the values", "one alpha > 0", values.size());
    alpha = values[0];
  }
};
static_assert(bilevel::ActivationPair<elu, double> && bilevel::ActivationPair<elu, float>);

/// Three spirals of `count` points in total, with some noise; labels 0..2.
bilevel::dataset<double> spirals(bilevel::random_source& random, bilevel::Index count) {
  bilevel::Matrix<double> x(2, count);
  std::vector<int> labels(std::size_t(count), 0);
  for (bilevel::Index j = 0; j < count; ++j) {
    const int arm = int(j % 3);
    const double t = random.uniform(0.1, 1.0);
    const double angle = 2 * std::numbers::pi * (arm / 3.0 + 1.5 * t);
    x(0, j) = 2 * t * std::cos(angle) + 0.08 * random.normal();
    x(1, j) = 2 * t * std::sin(angle) + 0.08 * random.normal();
    labels[std::size_t(j)] = arm;
  }
  return bilevel::make_dataset<double>(x, labels, 3);
}

template <class Method>
double train(Method method, const bilevel::dataset<double>& train_set,
             const bilevel::dataset<double>& test_set) {
  auto net = bilevel::make_mlp<double>({2, 64, 64, 3}, elu{});
  bilevel::random_source init(3);
  net.initialize(bilevel::init_scheme::glorot_uniform, init);
  bilevel::adam<double> optimizer({.learning_rate = 0.01}, net.parameter_count(),
                                  net.weight_count());
  bilevel::trainer loop(net, method, optimizer, 32, 4);
  for (int epoch = 1; epoch <= 30; ++epoch) loop.run_epoch(train_set);
  return bilevel::classification_error(net, test_set);
}

}  // namespace

int main() {
  const bilevel::pair_check_report check = bilevel::check_activation_pair<double>(elu{0.7});
  std::printf("numerical checker on elu(alpha = 0.7): %s\n%s",
              check.ok() ? "all identities hold" : "FAILED", check.summary().c_str());

  bilevel::random_source random(1);
  const auto train_set = spirals(random, 1500), test_set = spirals(random, 600);
  const double bp_error = train(bilevel::bp<double>(), train_set, test_set);
  const double fenbp_error = train(bilevel::fenchel_bp<double>(0.1), train_set, test_set);
  std::printf("three spirals, 2-64-64-3 ELU network, 30 epochs of Adam:\n"
              "  BP                      test error %.2f%%\n"
              "  Fenchel BP (beta 0.1)   test error %.2f%%\n",
              100 * bp_error, 100 * fenbp_error);
  return check.ok() && fenbp_error < 0.10 ? 0 : 1;
}
