#pragma once
/// \file
/// Every outer loss and the concept they model.

#include "concept.hpp"
#include "mse.hpp"
#include "softmax_cross_entropy.hpp"
