// Weight initialisation: reproducibility, draw order, ranges and empirical moments.

#include <bilevel/layers/init.hpp>
#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

using bilevel::Index;
using bilevel::init_scheme;
template <class S>
using Matrix = bilevel::Matrix<S>;
template <class S>
using Vector = bilevel::Vector<S>;

namespace {

struct moments {
  double mean = 0;
  double variance = 0;
};

template <class S>
moments sample_moments(const Matrix<S>& w) {
  const double n = static_cast<double>(w.size());
  moments out;
  out.mean = w.template cast<double>().sum() / n;
  out.variance = (w.template cast<double>().array() - out.mean).square().sum() / (n - 1);
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("initialisation is a function of the seed", "[init]", float, double) {
  using S = TestType;
  const init_scheme scheme =
      GENERATE(init_scheme::glorot_uniform, init_scheme::he_normal,
               init_scheme::negative_first_layer, init_scheme::negative_all_layers);
  INFO("scheme " << bilevel::to_string(scheme));
  Matrix<S> w1(20, 30), w2(20, 30), w3(20, 30);
  Vector<S> b1 = Vector<S>::Ones(20), b2(20), b3(20);
  bilevel::random_source r1(42), r2(42), r3(43);
  bilevel::initialize(scheme, w1, b1, r1);
  bilevel::initialize(scheme, w2, b2, r2);
  bilevel::initialize(scheme, w3, b3, r3);
  CHECK(w1 == w2);
  CHECK(w1 != w3);
  CHECK(b1.isZero(0));
  // A second layer from the same source continues the sequence rather than repeating it.
  Matrix<S> next(20, 30);
  bilevel::initialize(scheme, next, b2, r1);
  CHECK(next != w1);
}

TEST_CASE("weights are drawn column-major, one draw per weight", "[init]") {
  // The flat parameter buffer holds W column-major; a Map over it must see the same values.
  std::vector<double> buffer(6 + 3);
  bilevel::MatrixMap<double> w(buffer.data(), 3, 2);
  bilevel::VectorMap<double> b(buffer.data() + 6, 3);
  bilevel::random_source rng(7);
  bilevel::initialize(init_scheme::glorot_uniform, w, b, rng);

  bilevel::random_source replay(7);
  const double r = std::sqrt(6.0 / 5.0);
  for (Index j = 0; j < 2; ++j) {
    for (Index i = 0; i < 3; ++i) CHECK(w(i, j) == replay.uniform(-r, r));
  }
  // Nothing else was drawn: the next values agree too.
  CHECK(rng.uniform() == replay.uniform());

  // Blocks of a larger matrix and the explicit-scalar form work as well.
  Matrix<float> big = Matrix<float>::Constant(4, 5, 9.0f);
  Vector<float> bias(2);
  bilevel::random_source a(3), c(3);
  bilevel::initialize(init_scheme::he_normal, big.block(1, 1, 2, 3), bias, a);
  Matrix<float> alone(2, 3);
  bilevel::initialize<float>(init_scheme::he_normal, alone, bias, c);
  CHECK(big.block(1, 1, 2, 3) == alone);
  CHECK(big(0, 0) == 9.0f);
  CHECK(big(3, 4) == 9.0f);
}

TEMPLATE_TEST_CASE("glorot uniform stays in [-r, r] with variance r^2 / 3", "[init]", float,
                   double) {
  using S = TestType;
  const Index out = 256, in = 784;
  Matrix<S> w(out, in);
  Vector<S> b = Vector<S>::Constant(out, S(5));
  bilevel::random_source rng(2024);
  bilevel::initialize(init_scheme::glorot_uniform, w, b, rng);
  const double r = std::sqrt(6.0 / double(in + out));
  CHECK(w.cwiseAbs().maxCoeff() <= static_cast<S>(r));
  // The draws fill the range rather than a corner of it.
  CHECK(w.maxCoeff() > static_cast<S>(0.99 * r));
  CHECK(w.minCoeff() < static_cast<S>(-0.99 * r));
  const auto m = sample_moments(w);
  CHECK(std::abs(m.mean) < 0.01 * r);
  CHECK(m.variance == Approx(r * r / 3).epsilon(0.05));
  CHECK(b.isZero(0));
}

TEMPLATE_TEST_CASE("the negative starts are minus the absolute glorot draw on layer 1 (the "
                   "paper's) or on every layer",
                   "[init]", float, double) {
  using S = TestType;
  const Index out = 64, in = 100;
  const Vector<S> relu_output = Vector<S>::LinSpaced(in, S(0), S(3));
  for (const Index layer : {0, 1, 3}) {
    INFO("layer index " << layer);
    Matrix<S> paper(out, in), every(out, in), glorot(out, in);
    Vector<S> b1 = Vector<S>::Ones(out), b2 = Vector<S>::Ones(out), unused(out);
    bilevel::random_source r1(11), r2(11), r3(11);
    bilevel::initialize(init_scheme::negative_first_layer, paper, b1, r1, layer);
    bilevel::initialize(init_scheme::negative_all_layers, every, b2, r2, layer);
    bilevel::initialize(init_scheme::glorot_uniform, glorot, unused, r3, layer);
    CHECK(b1.isZero(0));
    CHECK(b2.isZero(0));
    // Every layer negative: with non-negative inputs (ReLU outputs) every a <= 0, the dead start.
    CHECK(every == -glorot.cwiseAbs());
    CHECK(((every * relu_output + b2).array() <= S(0)).all());
    // The paper's start negates only the first layer; the layers above keep the glorot draw.
    if (layer == 0)
      CHECK(paper == -glorot.cwiseAbs());
    else
      CHECK(paper == glorot);
  }
}

TEMPLATE_TEST_CASE("he normal has mean 0 and variance 2 / in", "[init]", float, double) {
  using S = TestType;
  const Index out = 256, in = 784;
  Matrix<S> w(out, in);
  Vector<S> b = Vector<S>::Constant(out, S(-1));
  bilevel::random_source rng(99);
  bilevel::initialize(init_scheme::he_normal, w, b, rng);
  const auto m = sample_moments(w);
  const double variance = 2.0 / double(in);
  CHECK(std::abs(m.mean) < 0.01 * std::sqrt(variance));
  CHECK(m.variance == Approx(variance).epsilon(0.05));
  CHECK(b.isZero(0));
  // Normal, not uniform: tails reach beyond 3 standard deviations in 200k draws.
  CHECK(w.cwiseAbs().maxCoeff() > static_cast<S>(3.5 * std::sqrt(variance)));
}

TEST_CASE("init scheme names round-trip; bad names and shapes are rejected", "[init]") {
  CHECK(bilevel::parse_init_scheme("glorot") == init_scheme::glorot_uniform);
  CHECK(bilevel::parse_init_scheme("he") == init_scheme::he_normal);
  CHECK(bilevel::parse_init_scheme("negative") == init_scheme::negative_first_layer);
  CHECK(bilevel::parse_init_scheme("all-negative") == init_scheme::negative_all_layers);
  for (auto scheme : {init_scheme::glorot_uniform, init_scheme::he_normal,
                      init_scheme::negative_first_layer, init_scheme::negative_all_layers}) {
    CHECK(bilevel::parse_init_scheme(bilevel::to_string(scheme)) == scheme);
  }
  for (const char* bad : {"xavier", "", "Glorot", "he_normal"}) {
    INFO("name \"" << bad << "\"");
    try {
      bilevel::parse_init_scheme(bad);
      FAIL("no config_error");
    } catch (const bilevel::config_error& e) {
      CHECK(std::string(e.what()) ==
            std::string("parse_init_scheme: init scheme must be \"glorot\", \"he\", ") +
                "\"negative\" or \"all-negative\", got \"" + bad + "\"");
    }
  }

  Matrix<double> w = Matrix<double>::Ones(4, 3);
  Vector<double> b = Vector<double>::Ones(3);
  bilevel::random_source rng(1);
  try {
    bilevel::initialize(init_scheme::glorot_uniform, w, b, rng);
    FAIL("no shape_error");
  } catch (const bilevel::shape_error& e) {
    const std::string message = e.what();
    CHECK(message.find("initialize") != std::string::npos);
    CHECK(message.find("4x1") != std::string::npos);
  }
  // Nothing was written before the check.
  CHECK(w.isOnes(0));
  CHECK(b.isOnes(0));
  Vector<double> fits = Vector<double>::Ones(4);
  CHECK_THROWS_WITH(bilevel::initialize(init_scheme::negative_first_layer, w, fits, rng, -1),
                    Catch::Contains("initialize") && Catch::Contains("layer index") &&
                        Catch::Contains("-1"));
}
