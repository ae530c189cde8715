// typed_ops<double>: every method and the run loop on the module's double programs.
#include "typed_impl.hpp"

template struct bilevel::python::typed_ops<double>;
