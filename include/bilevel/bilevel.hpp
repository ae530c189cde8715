#pragma once
// bilevel: inference learning methods over Eigen. Include this header for everything.

#include "activations/activations.hpp"
#include "core/error.hpp"
#include "core/random.hpp"
#include "core/types.hpp"
#include "couplings/couplings.hpp"
#include "io/idx.hpp"
#include "layers/dense.hpp"
#include "layers/init.hpp"
#include "losses/loss.hpp"
#include "methods/bp.hpp"
#include "methods/fenchel_bp.hpp"
#include "optimizers/optimizers.hpp"
#include "program.hpp"
