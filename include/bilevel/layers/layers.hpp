#pragma once
/// \file
/// Layers: the maps (dense, convolution, average pooling) with their image layout, the layer
/// of a program (a map and an activation pair), the architecture grammar, and initialisation.

#include "architecture.hpp"
#include "avg_pool.hpp"
#include "conv2d.hpp"
#include "dense.hpp"
#include "image.hpp"
#include "init.hpp"
#include "layer.hpp"
#include "map.hpp"
