#pragma once
/// \file
/// Files: idx data sets, checkpoints, NumPy .npy export and import, atomic writes.

#include "checkpoint.hpp"
#include "file.hpp"
#include "idx.hpp"
#include "npy.hpp"
