// The nested program (docs/methods.md §1): flat parameter layout, forward pass, validation,
// mixed activation pairs per layer.

#include <catch2/catch.hpp>

#include "bilevel/activations/activations.hpp"
#include "bilevel/couplings/couplings.hpp"
#include "bilevel/losses/mse.hpp"
#include "bilevel/program.hpp"
#include "bilevel/version.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;

TEST_CASE("parameters live in one buffer: all weights first, then all biases", "[program]") {
  auto net = make_mlp<double, relu>({784, 256, 128, 64, 10});
  const Index weights = 784 * 256 + 256 * 128 + 128 * 64 + 64 * 10;
  const Index biases = 256 + 128 + 64 + 10;
  CHECK(net.depth() == 4);
  CHECK(net.weight_count() == weights);
  CHECK(net.parameter_count() == weights + biases);
  CHECK(net.layer(0).weight_offset() == 0);
  CHECK(net.layer(1).weight_offset() == 784 * 256);
  CHECK(net.layer(0).bias_offset() == weights);
  CHECK(net.layer(3).bias_offset() == weights + biases - 10);
  // The maps are views: writing through them writes the flat buffer.
  net.weights(1)(2, 3) = 4.5;
  net.bias(2)(5) = -1.25;
  CHECK(net.parameters()(784 * 256 + 3 * 128 + 2) == 4.5);
  CHECK(net.parameters()(weights + 256 + 128 + 5) == -1.25);
}

TEST_CASE("the forward pass computes z_k = f(W_k z_{k-1} + b_k)", "[program]") {
  random_source random(3);
  auto net = make_mlp<double, tanh_pair>({3, 5, 2});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 4);
  forward_state<double> state;
  net.forward(x, state);
  const Matrix<double> a1 = (net.weights(0) * x).colwise() + net.bias(0);
  const Matrix<double> z1 = a1.array().tanh().matrix();
  const Matrix<double> a2 = (net.weights(1) * z1).colwise() + net.bias(1);
  CHECK((state.a[0] - a1).norm() < 1e-14);
  CHECK((state.z[1] - z1).norm() < 1e-14);
  CHECK((state.z[2] - a2).norm() < 1e-14);  // identity output: logits
  CHECK(state.z[0] == x);
}

TEST_CASE("layers may carry different activation pairs", "[program]") {
  using net_type = program<double, mse, relu, sigmoid, softmax>;
  random_source random(4);
  net_type net({3, 4, 4, 3}, {relu{}, sigmoid{}, softmax{}});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 3, 5);
  forward_state<double> state;
  net.forward(x, state);
  CHECK(state.z[1].minCoeff() >= 0.0);
  CHECK(state.z[2].maxCoeff() < 1.0);
  CHECK((state.z[3].colwise().sum().array() - 1.0).abs().maxCoeff() < 1e-12);
  CHECK(net.layer(1).visit([](const auto& pair) { return pair.name(); }) == "sigmoid");
}

TEST_CASE("programs reject inconsistent sizes and inputs", "[program]") {
  CHECK_THROWS_AS((make_mlp<double, relu>({784})), config_error);
  CHECK_THROWS_WITH((make_mlp<double, relu>({784, 0, 10})),
                    Catch::Contains("layer size 1") && Catch::Contains("got 0"));
  using net_type = program<double, mse, relu>;
  CHECK_THROWS_WITH(net_type({3, 4, 2}, {relu{}}),
                    Catch::Contains("one per layer (2)") && Catch::Contains("got 1"));
  auto net = make_mlp<double, relu>({3, 4, 2});
  forward_state<double> state;
  CHECK_THROWS_AS(net.forward(Matrix<double>::Zero(5, 2), state), shape_error);
}

TEST_CASE("sizes whose products overflow or cannot be allocated are refused, not wrapped",
          "[program][reliability]") {
  const Index huge = Index(1) << 62;
  CHECK_THROWS_AS((make_mlp<double, relu>({784, huge, 10})), config_error);
  CHECK_THROWS_WITH((make_mlp<double, relu>({784, huge, 10})),
                    Catch::Contains("program: the number of weights overflows"));
  // The sum of the layers' weights overflows though each product fits.
  const Index big = Index(1) << 31;
  CHECK_THROWS_WITH((make_mlp<double, relu>({big, big, big, 1})),
                    Catch::Contains("the number of weights overflows: 4611686018427387904 + "));
  // Fits an Index, not the bytes of the buffer.
  CHECK_THROWS_WITH((make_mlp<double, relu>({Index(1) << 40, Index(1) << 20, 1})),
                    Catch::Contains("the parameters' bytes overflows"));
  // Fits everything but memory: a config_error naming the count, not std::bad_alloc.
  CHECK_THROWS_WITH((make_mlp<double, relu>({784, Index(1) << 36, 10})),
                    Catch::Contains("cannot allocate its") && Catch::Contains("parameters"));
}

TEST_CASE("layer energies vanish at the forward pass for the penalizer and Fenchel couplings",
          "[program][couplings]") {
  random_source random(6);
  auto net = make_mlp<double, sigmoid>({4, 6, 5, 3});
  randomize(net, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 7);
  forward_state<double> state;
  net.forward(x, state);
  CHECK(net.layer_energies<penalizer_coupling>(state.z).cwiseAbs().maxCoeff() < 1e-14);
  CHECK(net.layer_energies<fenchel_coupling>(state.z).cwiseAbs().maxCoeff() < 1e-12);
  // Perturbing z_1 makes layer 1's energy positive and layer 2's nonzero.
  state.z[1].array() = (state.z[1].array() * 0.9 + 0.05);
  const Matrix<double> energies = net.layer_energies<fenchel_coupling>(state.z);
  CHECK(energies.row(0).minCoeff() > 0.0);
  CHECK(energies.row(1).cwiseAbs().minCoeff() > 0.0);
  CHECK(energies.row(2).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("the library's version is the CMake package's", "[program]") {
  CHECK(bilevel::version == BILEVEL_PROJECT_VERSION);
  CHECK(std::string(bilevel::version) == std::to_string(bilevel::version_major) + "." +
                                             std::to_string(bilevel::version_minor) + "." +
                                             std::to_string(bilevel::version_patch));
}
