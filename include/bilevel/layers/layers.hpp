#pragma once
/// \file
/// Layers and their initialisation: the dense layer of programs, and the image maps
/// (convolution, average pooling) with their layout.

#include "avg_pool.hpp"
#include "conv2d.hpp"
#include "dense.hpp"
#include "image.hpp"
#include "init.hpp"
