#pragma once
/// \file
/// The three inner objectives of docs/methods.md §3.

#include "fenchel.hpp"
#include "penalizer.hpp"
#include "proximal.hpp"
