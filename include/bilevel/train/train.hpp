#pragma once
/// \file
/// Data sets and the training loop.

#include "dataset.hpp"
#include "run_loop.hpp"
#include "trainer.hpp"
