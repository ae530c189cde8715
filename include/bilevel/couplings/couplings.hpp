#pragma once
// The three inner objectives of METHODS.md §3.

#include "fenchel.hpp"
#include "penalizer.hpp"
#include "proximal.hpp"
