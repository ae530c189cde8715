// Every method's public entry points check their batch in every build type: x must have the
// program's input size and finite entries, y its output size, as many columns as x and valid
// targets for the loss (probability vectors for cross-entropy), and the batch must not be
// empty. Each violation is a shape_error, numeric_error or config_error whose message names
// the entry point, the expected and the actual value; nothing is computed on a wrong batch.

#include <catch2/catch.hpp>

#include <limits>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "bilevel/bilevel.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;
using Catch::Matchers::Contains;

namespace {

using net_type = mlp<double, relu>;

/// Calls `entry(x, y)` with each kind of bad batch and checks the error it throws.
template <class Entry>
void check_batch_errors(const std::string& method, Entry entry) {
  random_source random(1);
  const Matrix<double> x = random_matrix<double>(random, 4, 6);
  const Matrix<double> y = random_one_hot<double>(random, 3, 6);
  INFO(method);
  const Matrix<double> wide_x = random_matrix<double>(random, 5, 6);
  CHECK_THROWS_AS(entry(wide_x, y), shape_error);
  CHECK_THROWS_WITH(entry(wide_x, y), Contains("x must be 4 x B, one sample per column, got 5x6"));
  // Samples as rows (the PyTorch layout): the message says so.
  const Matrix<double> rows_x = random_matrix<double>(random, 6, 4);
  CHECK_THROWS_WITH(entry(rows_x, y), Contains("got 6x4 (samples as rows? pass the transpose)"));
  Matrix<double> nan_x = x;
  nan_x(2, 3) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(entry(nan_x, y), numeric_error);
  CHECK_THROWS_WITH(entry(nan_x, y), Contains("x must be finite"));
  Matrix<double> infinite_x = x;
  infinite_x(0, 5) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(entry(infinite_x, y), numeric_error);
  // Cross-entropy targets are probability vectors: no negative entry, sums of 1.
  Matrix<double> negative_y = y;
  negative_y.col(4) << -0.5, 1.0, 0.5;
  CHECK_THROWS_AS(entry(x, negative_y), config_error);
  CHECK_THROWS_WITH(entry(x, negative_y), Contains("probability vectors") &&
                                             Contains("column 4 with minimum -0.5"));
  const Matrix<double> doubled_y = 2 * y;
  CHECK_THROWS_WITH(entry(x, doubled_y), Contains("probability vectors") && Contains("sum 2"));
  Matrix<double> soft_y = y;  // soft labels are targets too
  soft_y.col(1) << 0.2, 0.3, 0.5;
  CHECK_NOTHROW(entry(x, soft_y));
  const Matrix<double> tall_y = random_one_hot<double>(random, 4, 6);
  CHECK_THROWS_AS(entry(x, tall_y), shape_error);
  CHECK_THROWS_WITH(entry(x, tall_y), Contains("y must be 3x6, got 4x6"));
  const Matrix<double> short_y = random_one_hot<double>(random, 3, 5);
  CHECK_THROWS_AS(entry(x, short_y), shape_error);
  CHECK_THROWS_WITH(entry(x, short_y), Contains("y must be 3x6, got 3x5"));
  const Matrix<double> empty_x(4, 0), empty_y(3, 0);
  CHECK_THROWS_AS(entry(empty_x, empty_y), config_error);
  CHECK_THROWS_WITH(entry(empty_x, empty_y), Contains("the batch size must be > 0, got 0"));
  CHECK_NOTHROW(entry(x, y));
}

}  // namespace

TEST_CASE("every method's gradient checks its batch", "[errors]") {
  random_source random(2);
  auto net = make_mlp<double, relu>({4, 5, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  auto methods = std::make_tuple(bp<double>(), fenchel_bp<double>(0.1), chl<double>(),
                                 pcn<double>(), pcn<double>::zil(), mac<double>(), lpom<double>(),
                                 fln<double>());
  std::apply(
      [&](auto&... method) {
        (check_batch_errors(method.name() + "::gradient",
                            [&](const Matrix<double>& x, const Matrix<double>& y) {
                              Vector<double> gradient;
                              return method.gradient(net, x, y, gradient);
                            }),
         ...);
      },
      methods);
  // EP needs bounded hidden pairs (methods/ep.hpp); with and without sample indices.
  auto hopfield = make_mlp<double, hard_sigmoid>({4, 5, 3});
  hopfield.initialize(init_scheme::glorot_uniform, random);
  ep<double> method;
  check_batch_errors("ep::gradient", [&](const Matrix<double>& x, const Matrix<double>& y) {
    Vector<double> gradient;
    return method.gradient(hopfield, x, y, gradient);
  });
  ep<double> persistent({.particles = 10});
  check_batch_errors("ep::gradient", [&](const Matrix<double>& x, const Matrix<double>& y) {
    Vector<double> gradient;
    const std::vector<Index> samples{0, 1, 2, 3, 4, 5};
    return persistent.gradient(hopfield, x, y, std::span<const Index>(samples.data(),
                                                                      std::size_t(x.cols())),
                               gradient);
  });
}

TEST_CASE("every method's own training step checks its batch and leaves the program as it was",
          "[errors]") {
  random_source random(3);
  auto net = make_mlp<double, relu>({4, 5, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  auto methods = std::make_tuple(mac<double>(), lpom<double>(), fln<double>(), altmin<double>());
  std::apply(
      [&](auto&... method) {
        (check_batch_errors(method.name() + "::train_step",
                            [&](const Matrix<double>& x, const Matrix<double>& y) {
                              auto copy = net;
                              const Vector<double> before = copy.parameters();
                              try {
                                return method.train_step(copy, x, y);
                              } catch (const error&) {
                                CHECK(copy.parameters() == before);
                                throw;
                              }
                            }),
         ...);
      },
      methods);
}

TEST_CASE("EP's prediction checks its input", "[errors]") {
  random_source random(4);
  auto net = make_mlp<double, hard_sigmoid>({4, 5, 3});
  net.initialize(init_scheme::glorot_uniform, random);
  ep<double> method;
  Matrix<double> output;
  CHECK_THROWS_WITH(method.predict(net, Matrix<double>::Zero(5, 2), output),
                    Contains("ep::predict") && Contains("x must be 4 x B, one sample per column, got 5x2"));
  CHECK_THROWS_WITH(method.predict(net, Matrix<double>::Zero(4, 0), output),
                    Contains("the batch size must be > 0, got 0"));
}

TEST_CASE("every method rejects settings out of range with a config_error naming them",
          "[errors]") {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (const double bad : {0.0, -1.0, nan, inf}) {
    INFO(bad);
    CHECK_THROWS_WITH(fenchel_bp<double>(bad), Contains("fenchel_bp: beta must be"));
    CHECK_THROWS_WITH(fenchel_bp<double>(std::vector<double>{0.1, bad}),
                      Contains("fenchel_bp: beta must be"));
    CHECK_THROWS_WITH(chl<double>({.beta = bad}), Contains("chl: beta must be"));
    CHECK_THROWS_WITH(chl<double>({.gamma = bad}), Contains("chl: gamma must be"));
    CHECK_THROWS_WITH(ep<double>({.beta = bad}), Contains("ep: beta must be"));
    ep<double>::settings ep_step;
    ep_step.step = bad;
    CHECK_THROWS_WITH(ep<double>(ep_step), Contains("ep: step must be"));
    CHECK_THROWS_WITH(pcn<double>({.inference_rate = bad}), Contains("pcn: inference_rate must be"));
    CHECK_THROWS_WITH(pcn<double>({.spacing = bad}), Contains("pcn: spacing must be"));
    CHECK_THROWS_WITH(mac<double>({.mu = bad}), Contains("mac: mu must be"));
    CHECK_THROWS_WITH(lpom<double>({.lambda = {bad}}), Contains("lpom: lambda must be"));
    CHECK_THROWS_WITH(fln<double>({.lambda = {1.0, bad}}), Contains("fln: lambda must be"));
    CHECK_THROWS_WITH(altmin<double>({.mu = bad}), Contains("altmin: mu must be"));
    altmin<double>::settings code_rate;
    code_rate.code_rate = bad;
    CHECK_THROWS_WITH(altmin<double>(code_rate), Contains("altmin: code_rate must be"));
  }
  CHECK_THROWS_WITH(fenchel_bp<double>(std::vector<double>{}),
                    Contains("fenchel_bp: the list of betas must be non-empty"));
  CHECK_THROWS_WITH(chl<double>({.stopping = {1e-3, 0}}),
                    Contains("chl: max_iterations must be >= 1, got 0"));
  CHECK_THROWS_WITH(chl<double>({.stopping = {1.5, 10}}),
                    Contains("chl: tolerance must be in (0, 1), got 1.5"));
  CHECK_THROWS_WITH(pcn<double>({.stopping = {1e-4, 0}}),
                    Contains("pcn: max_iterations must be >= 1, got 0"));
  CHECK_THROWS_WITH(mac<double>({.z_stopping = {2, 10}}),
                    Contains("mac: tolerance must be in (0, 1), got 2"));
  CHECK_THROWS_WITH(lpom<double>({.stopping = {1e-3, 0}}),
                    Contains("lpom: max_iterations must be >= 1, got 0"));
  CHECK_THROWS_WITH(mac<double>({.mu = 2, .mu_growth = 0.5}),
                    Contains("mac: mu_growth must be finite and >= 1, got 0.5"));
  // A per-layer list must match the depth, which the method learns at its first batch.
  random_source random(5);
  auto net = make_mlp<double, relu>({4, 5, 3});
  const Matrix<double> x = random_matrix<double>(random, 4, 2);
  const Matrix<double> y = random_one_hot<double>(random, 3, 2);
  Vector<double> gradient;
  fenchel_bp<double> three_betas(std::vector<double>{0.1, 0.1, 0.1});
  CHECK_THROWS_WITH(three_betas.gradient(net, x, y, gradient),
                    Contains("the number of betas must be 1 or one per layer (2), got 3"));
  lpom<double> three_lambdas({.lambda = {1.0, 1.0, 1.0}});
  CHECK_THROWS_WITH(three_lambdas.gradient(net, x, y, gradient),
                    Contains("the number of lambdas must be 1 or one per layer (2), got 3"));
}

TEST_CASE("squared-error targets may be any finite values, not NaN or Inf", "[errors][reliability]") {
  random_source random(5);
  auto net = program<double, mse, relu, identity>({4, 5, 3}, {relu{}, identity{}});
  net.initialize(init_scheme::glorot_uniform, random);
  const Matrix<double> x = random_matrix<double>(random, 4, 6);
  Matrix<double> y = 3 * random_matrix<double>(random, 3, 6);  // negative, unnormalised: fine
  bp<double> method;
  Vector<double> gradient;
  CHECK_NOTHROW(method.gradient(net, x, y, gradient));
  y(1, 2) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(method.gradient(net, x, y, gradient), numeric_error);
  CHECK_THROWS_WITH(method.gradient(net, x, y, gradient),
                    Contains("bp::gradient: the targets y must be finite for mse"));
}
