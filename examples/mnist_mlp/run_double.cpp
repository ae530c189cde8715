// The double instantiation of the trainer (a translation unit of its own to build in parallel).
#include "run.hpp"

int mnist_mlp::run_double(const options& opts, const processes& group) {
  return dispatch_activation<double>(opts, group);
}
