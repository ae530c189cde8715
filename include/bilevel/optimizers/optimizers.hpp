#pragma once
/// \file
/// All optimisers and learning-rate schedules.

#include "adam.hpp"
#include "any_optimizer.hpp"
#include "schedule.hpp"
#include "sgd.hpp"
