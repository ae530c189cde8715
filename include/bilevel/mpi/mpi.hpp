#pragma once
/// \file
/// bilevel's MPI part: data-parallel training over the processes of an MPI job. Needs MPI: link
/// the CMake target bilevel::mpi (bilevel configured with -DBILEVEL_WITH_MPI=ON).

#include "communicator.hpp"
#include "data_parallel.hpp"
