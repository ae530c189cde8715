#pragma once
/// \file
/// Every built-in activation pair, the ActivationPair concept and the numerical checker.

#include "check.hpp"
#include "concept.hpp"
#include "hard_sigmoid.hpp"
#include "hard_tanh.hpp"
#include "identity.hpp"
#include "leaky_relu.hpp"
#include "registry.hpp"
#include "relu.hpp"
#include "sigmoid.hpp"
#include "softmax.hpp"
#include "tanh.hpp"
