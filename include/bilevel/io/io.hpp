#pragma once
/// \file
/// Files: idx data sets, checkpoints, atomic writes.

#include "checkpoint.hpp"
#include "file.hpp"
#include "idx.hpp"
