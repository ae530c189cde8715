#pragma once
/// \file
/// bilevel: inference learning methods over Eigen. Include this header for everything but the
/// MPI part, which needs MPI and has its own: bilevel/mpi/mpi.hpp (CMake target bilevel::mpi).

#include "activations/activations.hpp"
#include "core/core.hpp"
#include "couplings/couplings.hpp"
#include "io/io.hpp"
#include "layers/layers.hpp"
#include "losses/losses.hpp"
#include "methods/methods.hpp"
#include "optimizers/optimizers.hpp"
#include "program.hpp"
#include "surrogate/surrogate.hpp"
#include "train/train.hpp"
#include "version.hpp"
