#pragma once
/// \file
/// The core: matrix types, errors, finiteness checks, random sources, parallel loops, saved-state
/// streams, the denormal-flushing switch.

#include "denormals.hpp"
#include "error.hpp"
#include "finite.hpp"
#include "parallel.hpp"
#include "random.hpp"
#include "state_stream.hpp"
#include "types.hpp"
