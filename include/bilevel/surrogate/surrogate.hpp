#pragma once
/// \file
/// Gradients of general bilevel problems (contrastive surrogates and implicit differentiation,
/// docs/methods.md §4) and the adapter that poses a program on one sample as such a problem.

#include "bilevel_surrogate.hpp"
#include "program_problem.hpp"
