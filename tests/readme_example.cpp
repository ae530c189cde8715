// The README's code example, kept compiling and working: one Fenchel BP step with Adam lowers
// the loss on a fixed batch.

#include <catch2/catch.hpp>

#include <fstream>
#include <iterator>
#include <string>

#include "bilevel/bilevel.hpp"
#include "helpers.hpp"

TEST_CASE("the README example runs and its steps lower the loss", "[readme]") {
  bilevel::random_source data_random(2);
  const bilevel::Matrix<float> x =
      bilevel::testing::random_matrix<float>(data_random, 784, 50).cwiseAbs();
  const bilevel::Matrix<float> y = bilevel::testing::random_one_hot<float>(data_random, 10, 50);
  double first_loss = 0, last_loss = 0;

  // --- README example begins ---
  using namespace bilevel;
  auto net = make_mlp<float, relu>({784, 256, 128, 64, 10});  // softmax cross-entropy on logits
  random_source random(1);
  net.initialize(init_scheme::glorot_uniform, random);
  fenchel_bp<float> method(0.01f);  // beta per sample (docs/methods.md §1)
  adam<float> optimizer({.learning_rate = 1e-3f}, net.parameter_count(), net.weight_count());
  Vector<float> gradient;  // same flat layout as net.parameters()
  for (int step = 0; step < 20; ++step) {
    step_report report = method.gradient(net, x, y, gradient);  // x: 784 x B, y: 10 x B
    optimizer.step(net.parameters(), gradient);
    // --- README example ends ---
    (step == 0 ? first_loss : last_loss) = report.loss;
  }
  CHECK(last_loss < 0.5 * first_loss);
}

TEST_CASE("the README's complete first program is examples/first_program.cpp, verbatim",
          "[readme]") {
  const auto read = [](const std::string& name) {
    std::ifstream in(std::string(BILEVEL_SOURCE_DIR) + "/" + name);
    REQUIRE(in);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  const std::string program = read("examples/first_program.cpp");
  CHECK(program.find("int main(") != std::string::npos);
  CHECK(read("README.md").find("```cpp\n" + program + "```\n") != std::string::npos);
}
