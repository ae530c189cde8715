#pragma once
/// \file
/// Layers and their initialisation.

#include "dense.hpp"
#include "init.hpp"
