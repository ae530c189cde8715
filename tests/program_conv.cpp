// Programs of image layers (docs/methods.md §1): the architecture grammar, shapes chained and
// refused with the layer named, the flat layout and forward pass against the maps applied by
// hand, initialisation by each map's fans, BP against finite differences on a small CNN, every
// method's gradient tending to BP's as its spacing shrinks and Z-IL equal to BP on it, and
// checkpoints of image programs.

#include <Eigen/SVD>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bilevel/activations/activations.hpp"
#include "bilevel/core/state_stream.hpp"
#include "bilevel/io/checkpoint.hpp"
#include "bilevel/methods/methods.hpp"
#include "helpers.hpp"

using namespace bilevel;
using namespace bilevel::testing;
using Catch::Matchers::Contains;

namespace {

using cnn = program<double, softmax_cross_entropy, relu, identity>;

/// 1x6x6 images -> conv3k3p1 (relu) -> pool2 -> conv4k2 (relu) -> dense5: every map, a padded
/// and an unpadded convolution, 5 classes.
cnn small_cnn() {
  return cnn({1, 6, 6}, parse_architecture("conv3k3p1-pool2-conv4k2-dense5"),
             {relu{}, identity{}, relu{}, identity{}});
}

cnn lenet5() {
  return cnn({1, 28, 28},
             parse_architecture("conv6k5p2-pool2-conv16k5-pool2-dense120-dense84-dense10"),
             {relu{}, identity{}, relu{}, identity{}, relu{}, relu{}, identity{}});
}

/// small_cnn() with random parameters and a random batch of `batch` images and labels.
struct cnn_problem {
  cnn net = small_cnn();
  Matrix<double> x, y;
};

cnn_problem random_problem(std::uint64_t seed, Index batch) {
  random_source random(seed);
  cnn_problem problem;
  randomize(problem.net, random, 0.6);
  problem.x = random_matrix<double>(random, 36, batch);
  problem.y = random_one_hot<double>(random, 5, batch);
  return problem;
}

Vector<double> bp_gradient(const cnn& net, const Matrix<double>& x, const Matrix<double>& y) {
  Vector<double> gradient;
  bp<double>().gradient(net, x, y, gradient);
  return gradient;
}

double cosine(const Vector<double>& a, const Vector<double>& b) {
  return a.dot(b) / (a.norm() * b.norm());
}

}  // namespace

TEST_CASE("the architecture grammar round-trips and names a bad token", "[conv]") {
  const std::string lenet = "conv6k5p2-pool2-conv16k5-pool2-dense120-dense84-dense10";
  CHECK(describe(parse_architecture(lenet)) == lenet);
  const std::vector<map_spec> specs = parse_architecture("conv8k3s2p1-pool3s2-dense7");
  REQUIRE(specs.size() == 3);
  CHECK(std::get<conv_spec>(specs[0]) == conv_spec{8, 3, 2, 1});
  CHECK(std::get<pool_spec>(specs[1]) == pool_spec{3, 2});
  CHECK(std::get<dense_spec>(specs[2]) == dense_spec{7});
  CHECK(describe(specs) == "conv8k3s2p1-pool3s2-dense7");
  CHECK(describe(parse_architecture("pool2s2-conv1k1s1p0")) == "pool2-conv1k1");
  CHECK_THROWS_WITH(parse_architecture("conv6-dense10"),
                    Contains("\"conv6\"") && Contains("kernel size"));
  CHECK_THROWS_WITH(parse_architecture("dense10-maxpool2"),
                    Contains("\"maxpool2\"") && Contains("none of"));
  CHECK_THROWS_WITH(parse_architecture("dense0"), Contains("\"dense0\"") && Contains(">= 1"));
  CHECK_THROWS_WITH(parse_architecture("pool2x"), Contains("\"pool2x\"") && Contains("\"x\""));
  CHECK_THROWS_WITH(parse_architecture("conv6k5p2s1"),
                    Contains("\"conv6k5p2s1\"") && Contains("\"s1\""));
  CHECK_THROWS_WITH(parse_architecture("dense10--dense5"), Contains("empty layer"));
  CHECK_THROWS_WITH(parse_architecture(""), Contains("empty layer"));
}

TEST_CASE("LeNet-5's layers chain their shapes into LeNet-5's parameter count", "[conv]") {
  const cnn net = lenet5();
  const std::vector<Index> outputs = {6 * 28 * 28, 6 * 14 * 14, 16 * 10 * 10, 16 * 5 * 5,
                                      120,         84,          10};
  REQUIRE(net.depth() == 7);
  CHECK(net.input_size() == 784);
  for (Index k = 0; k < 7; ++k) {
    CHECK(net.layer(k).outputs() == outputs[std::size_t(k)]);
    if (k > 0) CHECK(net.layer(k).inputs() == outputs[std::size_t(k - 1)]);
  }
  // 156 + 2416 + 48120 + 10164 + 850, the count of LeNet-5 with parameter-free pooling.
  CHECK(net.parameter_count() == 61706);
  CHECK(net.weight_count() == 150 + 2400 + 48000 + 10080 + 840);
  CHECK(net.layer(1).weight_count() == 0);
  CHECK(net.layer(2).weight_rows() == 6 * 25);
  CHECK(net.layer(2).weight_cols() == 16);
  CHECK(net.layer(2).bias_offset() == net.weight_count() + 6);
}

TEST_CASE("layers that do not fit the image below them are refused, naming both",
          "[conv]") {
  using pairs = std::vector<cnn::pair_type>;
  CHECK_THROWS_WITH(cnn({1, 4, 4}, {conv_spec{2, 5}}, pairs{identity{}}),
                    Contains("layer 1") && Contains("conv2k5") && Contains("1x4x4"));
  CHECK_THROWS_AS(cnn({1, 4, 4}, {conv_spec{2, 5}}, pairs{identity{}}), shape_error);
  // A dense layer's output is a 1 x 1 image: no 3 x 3 window fits it.
  CHECK_THROWS_WITH(cnn({1, 8, 8}, {dense_spec{10}, conv_spec{2, 3}}, pairs{relu{}, identity{}}),
                    Contains("layer 2") && Contains("conv2k3") && Contains("10x1x1"));
  CHECK_THROWS_WITH(cnn({1, 8, 8}, {conv_spec{2, 3}, pool_spec{8}}, pairs{relu{}, identity{}}),
                    Contains("layer 2") && Contains("pool8") && Contains("2x6x6"));
  CHECK_THROWS_WITH(cnn({1, 8, 8}, {conv_spec{0, 3}}, pairs{identity{}}),
                    Contains("layer 1") && Contains("filters"));
  CHECK_THROWS_WITH(cnn({1, 8, 8}, {conv_spec{2, 3}}, pairs{relu{}, identity{}}),
                    Contains("activation pairs"));
  CHECK_THROWS_WITH(cnn({0, 8, 8}, {dense_spec{2}}, pairs{identity{}}), Contains("input shape"));
}

TEST_CASE("an image program's forward pass is its maps applied to slices of the flat buffer",
          "[conv]") {
  random_source random(3);
  cnn net = small_cnn();
  randomize(net, random, 0.5);
  const Matrix<double> x = random_matrix<double>(random, 36, 4);
  forward_state<double> state;
  net.forward(x, state);

  // By hand, with the layout [W_1 .. W_L | b_1 .. b_L] read off the shapes.
  const Vector<double>& p = net.parameters();
  const Index w1 = 9 * 3, w3 = 12 * 4, w4 = 16 * 5;
  const ConstMatrixMap<double> W1(p.data(), 9, 3), W3(p.data() + w1, 12, 4),
      W4(p.data() + w1 + w3, 5, 16);
  const Index b = w1 + w3 + w4;
  const Vector<double> b1 = p.segment(b, 3), b3 = p.segment(b + 3, 4), b4 = p.segment(b + 7, 5);
  const conv2d<double> conv1({{1, 6, 6}, 3, 3, 1, 1});
  const avg_pool<double> pool({{3, 6, 6}, 2});
  const conv2d<double> conv3({{3, 3, 3}, 4, 2, 1, 0});
  Matrix<double> a1(108, 4), a2(27, 4), a3(16, 4);
  conv1.apply(W1, b1, x, a1);
  pool.apply(a1.cwiseMax(0.0), a2);
  conv3.apply(W3, b3, a2, a3);
  const Matrix<double> out = (W4 * a3.cwiseMax(0.0)).colwise() + b4;
  CHECK((state.a[0] - a1).norm() == 0.0);
  CHECK((state.a[1] - a2).norm() == 0.0);
  CHECK((state.a[2] - a3).norm() == 0.0);
  CHECK((state.z.back() - out).norm() <= 1e-14 * out.norm());
}

TEST_CASE("initialisation draws each map's weights with its own fans", "[conv]") {
  cnn net = lenet5();
  random_source random(5);
  net.parameters().setConstant(7.0);
  net.initialize(init_scheme::he_normal, random);
  // conv2: fan-in C K K = 150, so N(0, 2 / 150); its 2400 weights estimate the deviation.
  const auto conv2 = net.weights(2);
  const double deviation = std::sqrt(conv2.squaredNorm() / double(conv2.size()));
  CHECK(deviation == Approx(std::sqrt(2.0 / 150)).epsilon(0.05));
  CHECK(net.bias(2).norm() == 0.0);
  net.initialize(init_scheme::glorot_uniform, random);
  // Glorot over (fan-in C K K, fan-out F K K) = (25, 150) for conv1, as PyTorch's.
  const double bound = std::sqrt(6.0 / (25 + 150));
  CHECK(net.weights(0).cwiseAbs().maxCoeff() <= bound);
  CHECK(net.weights(0).cwiseAbs().maxCoeff() > 0.9 * bound);
  CHECK(net.parameters().tail(net.parameter_count() - net.weight_count()).norm() == 0.0);
}

TEST_CASE("BP on a CNN is the finite-difference gradient of its loss", "[conv]") {
  const auto [net, x, y] = random_problem(7, 5);
  const Vector<double> gradient = bp_gradient(net, x, y);
  CHECK(relative_error(gradient, finite_difference_gradient(net, x, y)) < 1e-7);
  // Fenchel BP at a small spacing agrees to first order in it.
  Vector<double> fenchel;
  fenchel_bp<double>(1e-6).gradient(net, x, y, fenchel);
  CHECK(relative_error(fenchel, gradient) < 1e-4);
}

TEST_CASE("Z-IL equals BP on a CNN", "[conv]") {
  const auto [net, x, y] = random_problem(11, 6);
  Vector<double> gradient;
  pcn<double>::zil().gradient(net, x, y, gradient);
  CHECK(relative_error(gradient, bp_gradient(net, x, y)) < 1e-12);
}

TEST_CASE("every method's gradient on a CNN tends to BP's as its spacing shrinks", "[conv]") {
  const auto [net, x, y] = random_problem(13, 6);
  const Vector<double> reference = bp_gradient(net, x, y);
  const auto error_at = [&](const std::string& name, double spacing) {
    Vector<double> gradient;
    auto fln_settings = fln<double>::default_settings();
    fln_settings.lambda = {1 / spacing};
    step_report report;
    if (name == "chl") report = chl<double>({.beta = spacing}).gradient(net, x, y, gradient);
    if (name == "pcn") report = pcn<double>({.spacing = spacing}).gradient(net, x, y, gradient);
    if (name == "mac") report = mac<double>({.mu = 1 / spacing}).gradient(net, x, y, gradient);
    if (name == "lpom")
      report = lpom<double>({.lambda = {1 / spacing}}).gradient(net, x, y, gradient);
    if (name == "fln") report = fln<double>(fln_settings).gradient(net, x, y, gradient);
    INFO(name << " at spacing " << spacing);
    CHECK(report.converged());
    CHECK(cosine(gradient, reference) > 0.98);
    return relative_error(gradient, reference);
  };
  for (const std::string name : {"chl", "pcn", "mac", "lpom", "fln"}) {
    const double coarse = error_at(name, 1e-2), fine = error_at(name, 1e-3);
    INFO(name << ": relative error " << coarse << " at 1e-2, " << fine << " at 1e-3");
    CHECK(fine < 0.3 * coarse);  // first order in the spacing: a tenth, up to rounding
    CHECK(fine < 0.05);
  }
}

TEST_CASE("an image program's checkpoint restores it and names another architecture",
          "[conv]") {
  random_source random(17);
  cnn saved = small_cnn();
  randomize(saved, random);
  state_writer writer;
  saved.save_state(writer);
  cnn loaded = small_cnn();
  state_reader reader(writer.bytes(), "test");
  loaded.load_state(reader);
  CHECK(loaded.parameters() == saved.parameters());

  cnn other({1, 6, 6}, parse_architecture("conv3k3p1-pool3-conv4k2-dense5"),
            {relu{}, identity{}, relu{}, identity{}});
  const Vector<double> before = other.parameters();
  state_reader again(writer.bytes(), "test");
  CHECK_THROWS_WITH(other.load_state(again),
                    Contains("conv3k3p1-pool3-conv4k2-dense5") &&
                        Contains("conv3k3p1-pool2-conv4k2-dense5"));
  CHECK(other.parameters() == before);
  // A perceptron's state is not an image program's.
  auto perceptron = make_mlp<double, relu>({36, 5});
  state_writer dense_state;
  perceptron.save_state(dense_state);
  state_reader dense_reader(dense_state.bytes(), "test");
  CHECK_THROWS_WITH(loaded.load_state(dense_reader), Contains("image program"));
}

TEST_CASE("each layer's norm bound holds, and is tight for a box filter and a tiling pool",
          "[conv]") {
  using pairs = std::vector<cnn::pair_type>;
  // One 3 x 3 box filter over a 12 x 12 image (stride 1, padding 1), then 2 x 2 pooling.
  cnn net({1, 12, 12}, {conv_spec{1, 3, 1, 1}, pool_spec{2}, dense_spec{3}},
          pairs{relu{}, identity{}, identity{}});
  net.weights(0).setOnes();
  random_source random(19);
  net.weights(2) = random_matrix<double>(random, 3, 36);
  for (Index k = 0; k < 3; ++k) {
    // A_k as a dense matrix, column by column, and its largest singular value.
    const Index n = net.layer(k).inputs();
    Matrix<double> A(net.layer(k).outputs(), n), unit = Matrix<double>::Identity(n, n);
    net.linear(k, unit, A);
    const double norm = Eigen::JacobiSVD<Matrix<double>>(A).singularValues()(0);
    const double bound = net.layer(k).squared_norm_bound(net.parameters());
    INFO("layer " << k + 1 << ": ||A||^2 " << norm * norm << ", bound " << bound);
    CHECK(norm * norm <= bound * (1 + 1e-12));
    if (k == 1) CHECK(norm * norm == Approx(bound).epsilon(1e-12));  // A A^T = I / K^2
    // The box filter's norm tends to 81 = 9 ||W_c||_F^2 with the image's size: within 15%.
    if (k == 0) CHECK(norm * norm > 0.85 * bound);
  }
}

TEST_CASE("every map's operations agree with each other: linear, bias, scaled and added "
          "transposes, gradient terms", "[conv]") {
  auto [net, x, y] = random_problem(23, 3);
  random_source random(29);
  forward_state<double> state;
  net.forward(x, state);
  for (Index k = 0; k < net.depth(); ++k) {
    INFO("layer " << k + 1 << " (" << describe(net.maps()[std::size_t(k)]) << ")");
    const program_layer<double, relu, identity>& layer = net.layer(k);
    const Matrix<double>& in = state.z[std::size_t(k)];
    // affine = linear + the bias (which the linear map leaves out).
    Matrix<double> affine, linear, zero_input = Matrix<double>::Zero(in.rows(), in.cols());
    net.affine(k, in, affine);
    net.linear(k, in, linear);
    Matrix<double> bias_only;
    net.affine(k, zero_input, bias_only);
    CHECK((affine - linear - bias_only).norm() <= 1e-12 * affine.norm());
    // transpose: scale and add.
    const Matrix<double> g = random_matrix<double>(random, layer.outputs(), in.cols());
    Matrix<double> plain, scaled, added = random_matrix<double>(random, layer.inputs(), in.cols());
    const Matrix<double> start = added;
    net.transpose(k, g, plain);
    net.transpose(k, g, scaled, 0.25);
    net.transpose(k, g, added, -2.0, output_mode::add);
    CHECK((scaled - 0.25 * plain).norm() <= 1e-12 * plain.norm());
    CHECK((added - (start - 2.0 * plain)).norm() <= 1e-12 * added.norm());
    // <g, A x> = <A^T g, x>.
    CHECK(g.cwiseProduct(linear).sum() == Approx(plain.cwiseProduct(in).sum()).epsilon(1e-12));
    // The gradient of <g, A x + b>: its weight part adds onto what is there, and is linear in
    // the scale; the bias part is the sum of g's entries per bias.
    Vector<double> full = Vector<double>::Zero(net.parameter_count());
    layer.parameter_gradient(in, g, 0.5, full);
    Vector<double> twice = full;
    layer.add_weight_gradient(in, g, 0.5, twice);
    const auto weights = layer.weights(full), doubled = layer.weights(twice);
    CHECK((doubled - 2 * weights).norm() <= 1e-12 * std::max(1.0, weights.norm()));
    CHECK((layer.bias(twice) - layer.bias(full)).norm() == 0.0);
    // <g, A x + b> at the perturbed parameters, against the gradient (linear in theta).
    if (layer.weight_count() > 0) {
      cnn moved = net;
      const Vector<double> direction =
          random_matrix<double>(random, net.parameter_count(), 1, 0.1);
      moved.parameters() += direction;
      Matrix<double> after;
      moved.affine(k, in, after);
      const double change = g.cwiseProduct(after - affine).sum();
      CHECK(change == Approx(2 * full.dot(direction)).epsilon(1e-10));
    }
  }
}
