// A downstream program of the mpi component (find_package(bilevel COMPONENTS mpi)): on one
// process, started without mpirun, the data-parallel BP gradient of a tiny MLP must equal the
// plain one. Exit status 0 only then.

#include <cstdio>

#include <bilevel/bilevel.hpp>
#include <bilevel/mpi/mpi.hpp>

int main(int argc, char** argv) {
  using namespace bilevel;
  const mpi::session session(argc, argv);
  const mpi::communicator processes;
  auto net = make_mlp<double, relu>({4, 5, 3});
  random_source random(7);
  net.initialize(init_scheme::glorot_uniform, random);
  Matrix<double> x(4, 8);
  Matrix<double> y = Matrix<double>::Zero(3, 8);
  for (Index j = 0; j < x.cols(); ++j) {
    for (Index i = 0; i < x.rows(); ++i) x(i, j) = random.normal();
    y(Index(random.below(3)), j) = 1;
  }
  bp<double> method;
  mpi::data_parallel<double, bp<double>> parallel(method, processes);
  Vector<double> plain, reduced;
  method.gradient(net, x, y, plain);
  parallel.gradient(net, x, y, reduced);
  const bool ok = processes.size() == 1 && plain.size() == net.parameter_count() &&
                  (plain - reduced).cwiseAbs().maxCoeff() < 1e-12 && plain.norm() > 0;
  std::printf("consumer (mpi): %d process, gradient norm %g: %s\n", processes.size(),
              reduced.norm(), ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
