// The inner objectives of docs/methods.md §3: values, gradients against finite differences,
// non-negativity of the Fenchel coupling and equality of its proximal form; the penalizer
// coupling summed over a program (MAC's and PCN's energy) against its layers' couplings.

#include <catch2/catch.hpp>

#include "bilevel/activations/activations.hpp"
#include "bilevel/couplings/couplings.hpp"
#include "bilevel/program.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

namespace {

/// Central differences of the summed coupling value in the entries of `point` (z or a).
template <class Coupling, class Pair>
Matrix<double> numeric_gradient(const Pair& pair, Matrix<double> z, Matrix<double> a, bool in_z) {
  Matrix<double>& point = in_z ? z : a;
  Matrix<double> gradient(point.rows(), point.cols());
  const double h = 1e-6;
  for (Index j = 0; j < point.cols(); ++j)
    for (Index i = 0; i < point.rows(); ++i) {
      const double saved = point(i, j);
      point(i, j) = saved + h;
      const double plus = Coupling::template value<double>(pair, z, a).sum();
      point(i, j) = saved - h;
      const double minus = Coupling::template value<double>(pair, z, a).sum();
      point(i, j) = saved;
      gradient(i, j) = (plus - minus) / (2 * h);
    }
  return gradient;
}

template <class Coupling, class Pair>
void check_gradients(const Pair& pair, const Matrix<double>& z, const Matrix<double>& a) {
  Matrix<double> dz(z.rows(), z.cols()), da(a.rows(), a.cols());
  Coupling::template gradient_z<double>(pair, z, a, dz);
  Coupling::template gradient_a<double>(pair, z, a, da);
  CHECK((dz - numeric_gradient<Coupling>(pair, z, a, true)).norm() < 1e-6 * (1 + dz.norm()));
  CHECK((da - numeric_gradient<Coupling>(pair, z, a, false)).norm() < 1e-6 * (1 + da.norm()));
}

}  // namespace

TEMPLATE_TEST_CASE("coupling gradients equal finite differences (smooth pairs, z inside the "
                   "domain)",
                   "[couplings]", sigmoid, tanh_pair, identity) {
  random_source random(8);
  const Matrix<double> a = random_matrix<double>(random, 4, 5);
  Matrix<double> z(4, 5);
  activate<double>(TestType{}, random_matrix<double>(random, 4, 5), z);  // inside the range
  check_gradients<penalizer_coupling>(TestType{}, z, a);
  check_gradients<fenchel_coupling>(TestType{}, z, a);
  check_gradients<proximal_coupling>(TestType{}, z, a);
}

TEMPLATE_TEST_CASE("the Fenchel coupling is >= 0, zero exactly at z = f(a), and equals its "
                   "proximal form",
                   "[couplings]", relu, leaky_relu, hard_sigmoid, hard_tanh, sigmoid, tanh_pair,
                   softmax) {
  random_source random(9);
  const Matrix<double> a = random_matrix<double>(random, 5, 12, 2.0);
  Matrix<double> at_forward(5, 12), elsewhere(5, 12);
  activate<double>(TestType{}, a, at_forward);
  activate<double>(TestType{}, random_matrix<double>(random, 5, 12, 2.0), elsewhere);
  const RowVector<double> zero = fenchel_coupling::value<double>(TestType{}, at_forward, a);
  const RowVector<double> fenchel = fenchel_coupling::value<double>(TestType{}, elsewhere, a);
  const RowVector<double> proximal = proximal_coupling::value<double>(TestType{}, elsewhere, a);
  CHECK(zero.cwiseAbs().maxCoeff() < 1e-12);
  CHECK(fenchel.minCoeff() > 0.0);
  CHECK((fenchel - proximal).cwiseAbs().maxCoeff() < 1e-10 * (1 + fenchel.cwiseAbs().maxCoeff()));
}

TEST_CASE("the penalizer coupling is half the squared distance to f(a)", "[couplings]") {
  Matrix<double> z(2, 1), a(2, 1);
  z << 1.0, 0.5;
  a << -2.0, 0.25;
  // relu: f(a) = (0, 0.25): 1/2 (1 + 0.0625)
  CHECK(penalizer_coupling::value<double>(relu{}, z, a)(0) == Approx(0.53125));
}

TEMPLATE_TEST_CASE("a program's penalizer energy is its layers' penalizer couplings plus the "
                   "weighted loss, and its signals are the couplings' gradients in a",
                   "[couplings]", tanh_pair, relu, softmax) {
  random_source random(10);
  auto net = make_mlp<double, TestType>({4, 6, 5, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 7);
  const Matrix<double> y = random_one_hot<double>(random, 3, 7);
  const double penalty = 2.5, loss_weight = 0.75;
  detail::penalizer_energy<double> energy;
  energy.start(net, x, penalty, loss_weight);
  typename detail::penalizer_energy<double>::point p;
  energy.size(net, p);
  for (std::size_t k = 1; k < 3; ++k)
    p.d[k] = random_matrix<double>(random, p.d[k].rows(), 7, 0.3);
  energy.evaluate(net, y, p, true);

  // The same states in plain form: z_k = z^0_k + d_k, a_k = W_k z_{k-1} + b_k.
  const std::vector<Matrix<double>>& z = energy.states(p);
  RowVector<double> expected = RowVector<double>::Zero(7);
  for (Index k = 1; k <= 3; ++k) {
    const auto u = std::size_t(k);
    const Matrix<double> a =
        (net.weights(k - 1) * z[u - 1]).colwise() + Vector<double>(net.bias(k - 1));
    net.layer(k - 1).visit([&](const auto& pair) {
      if (k == 3) {  // the output: the program's loss on f_L(a_L)
        Matrix<double> output(a.rows(), a.cols());
        activate<double>(pair, a, output);
        RowVector<double> losses;
        net.loss_values(output, y, losses);
        expected += loss_weight * losses;
        return;
      }
      expected += penalty * penalizer_coupling::value<double>(pair, z[u], a);
      Matrix<double> gradient_a(a.rows(), a.cols());
      penalizer_coupling::gradient_a<double>(pair, z[u], a, gradient_a);
      CHECK((p.signal[u] - penalty * gradient_a).norm() < 1e-12 * (1 + gradient_a.norm()));
    });
  }
  CHECK((p.energy - expected).cwiseAbs().maxCoeff() < 1e-12 * (1 + expected.cwiseAbs().maxCoeff()));
}
