#pragma once
/// \file
/// The three inner objectives of docs/methods.md §3, and the penalizer coupling summed over a
/// program (the energy MAC and PCN minimise).

#include "fenchel.hpp"
#include "penalizer.hpp"
#include "penalizer_energy.hpp"
#include "proximal.hpp"
