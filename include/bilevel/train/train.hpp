#pragma once
/// \file
/// Data sets and the training loop.

#include "dataset.hpp"
#include "trainer.hpp"
