// The inner objectives of docs/methods.md §3: values, gradients against finite differences,
// non-negativity of the Fenchel coupling and equality of its proximal form.

#include <catch2/catch.hpp>

#include "bilevel/activations/activations.hpp"
#include "bilevel/couplings/couplings.hpp"
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
