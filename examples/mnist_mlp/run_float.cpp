// The float instantiation of the trainer (a translation unit of its own to build in parallel).
#include "run.hpp"

int mnist_mlp::run_float(const options& opts, const processes& group) {
  return dispatch_activation<float>(opts, group);
}
