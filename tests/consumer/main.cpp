// A downstream program built against an installed (or add_subdirectory'd) bilevel: one BP
// gradient of a tiny MLP. Exit status 0 only if that gradient is finite and not all zero.

#include <cstdio>

#include <bilevel/bilevel.hpp>

int main() {
  using namespace bilevel;
  auto net = make_mlp<double, relu>({4, 5, 3});
  random_source random(7);
  net.initialize(init_scheme::glorot_uniform, random);

  const Index batch = 8;
  Matrix<double> x(4, batch);
  Matrix<double> y = Matrix<double>::Zero(3, batch);
  for (Index j = 0; j < batch; ++j) {
    for (Index i = 0; i < x.rows(); ++i) x(i, j) = random.normal();
    y(Index(random.below(3)), j) = 1;  // one-hot targets
  }

  bp<double> method;
  Vector<double> gradient;
  const step_report report = method.gradient(net, x, y, gradient);
  const bool ok = gradient.size() == net.parameter_count() && gradient.allFinite() &&
                  gradient.cwiseAbs().maxCoeff() > 0;
  std::printf("consumer: loss %g, %ld parameters, gradient norm %g: %s\n", report.loss,
              static_cast<long>(gradient.size()), gradient.norm(), ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
