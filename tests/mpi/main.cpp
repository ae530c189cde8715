// The test runner of the MPI tests, started by mpirun on several processes: every process runs
// every test case (their MPI operations are collective), and the run passes only if every
// process passed.

#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdint>
#include <span>

#include "bilevel/mpi/communicator.hpp"

int main(int argc, char** argv) {
  bilevel::mpi::session mpi(argc, argv);
  const int failures = Catch::Session().run(argc, argv);
  const bilevel::mpi::communicator world;
  return world.all(failures == 0) ? 0 : 1;
}
