// typed_ops<float>: every method and the run loop on the module's float programs.
#include "typed_impl.hpp"

template struct bilevel::python::typed_ops<float>;
