#pragma once
/// \file
/// Every training method: back-propagation and the inference learning methods (docs/methods.md §5).

#include "altmin.hpp"
#include "any_method.hpp"
#include "batch_reduction.hpp"
#include "bp.hpp"
#include "chl.hpp"
#include "descent.hpp"
#include "ep.hpp"
#include "fenchel_bp.hpp"
#include "fln.hpp"
#include "lifted.hpp"
#include "lifted_method.hpp"
#include "lpom.hpp"
#include "mac.hpp"
#include "method.hpp"
#include "pcn.hpp"
#include "registry.hpp"
#include "stopping_rule.hpp"
#include "top_down.hpp"
