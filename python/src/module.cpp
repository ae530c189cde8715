// The Python module `bilevel`: programs, methods, optimizers and the run loop of the C++
// library on NumPy arrays (README "From Python"). Samples are rows here, columns in C++
// (arrays.hpp); the heavy work runs in typed_ops (network.hpp) with the GIL released.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <pybind11/stl/filesystem.h>

#include <Eigen/Core>
#include <algorithm>
#include <exception>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "arrays.hpp"
#include "network.hpp"

namespace bilevel::python {
namespace {

using detail::concat;

// ---------------------------------------------------------------------------------------------
// Errors: each library exception type is a Python exception type of the same message.

struct exception_types {
  PyObject* error = nullptr;
  PyObject* shape = nullptr;
  PyObject* data = nullptr;
  PyObject* config = nullptr;
  PyObject* numeric = nullptr;
  PyObject* unconverged = nullptr;  // a warning category
};
exception_types exceptions;  // set once at import; the module holds a reference to each

PyObject* add_exception(py::module_& m, const char* name, py::handle bases, const char* doc) {
  PyObject* type = PyErr_NewExceptionWithDoc(concat("bilevel.", name).c_str(), doc, bases.ptr(),
                                             nullptr);
  if (type == nullptr) throw py::error_already_set();
  m.add_object(name, py::handle(type));
  return type;
}

void register_exceptions(py::module_& m) {
  exceptions.error = add_exception(m, "Error", PyExc_RuntimeError,
                                   "Base of every error the bilevel library raises.");
  const auto both = [](PyObject* base) {
    return py::make_tuple(py::handle(exceptions.error), py::handle(base));
  };
  exceptions.shape = add_exception(m, "ShapeError", both(PyExc_ValueError),
                                   "An array or layer of the wrong shape.");
  exceptions.data = add_exception(m, "DataError", both(PyExc_ValueError),
                                  "A file or value that cannot be used (missing, corrupt, "
                                  "out of range).");
  exceptions.config = add_exception(m, "ConfigError", both(PyExc_ValueError),
                                    "A setting that is unknown or out of range.");
  exceptions.numeric = add_exception(m, "NumericError", both(PyExc_ArithmeticError),
                                     "A loss, gradient or parameter that is not finite.");
  exceptions.unconverged = add_exception(
      m, "UnconvergedWarning", PyExc_RuntimeWarning,
      "An inner solver stopped at its cap before converging for some samples.");
  py::register_exception_translator([](std::exception_ptr thrown) {
    try {
      if (thrown) std::rethrow_exception(thrown);
    } catch (const shape_error& e) {
      PyErr_SetString(exceptions.shape, e.what());
    } catch (const data_error& e) {
      PyErr_SetString(exceptions.data, e.what());
    } catch (const config_error& e) {
      PyErr_SetString(exceptions.config, e.what());
    } catch (const numeric_error& e) {
      PyErr_SetString(exceptions.numeric, e.what());
    } catch (const error& e) {
      PyErr_SetString(exceptions.error, e.what());
    }
  });
}

/// A UnconvergedWarning when an inner solve stopped at its cap for some samples.
void warn_unconverged(const std::string& where, const std::string& method, double share) {
  if (!(share > 0)) return;
  const std::string text =
      concat(where, ": the inner solver of ", method, " stopped at its cap before converging for ",
             100 * share, "% of the samples (raise inner_iterations or tolerance)");
  if (PyErr_WarnEx(exceptions.unconverged, text.c_str(), 1) != 0) throw py::error_already_set();
}

// ---------------------------------------------------------------------------------------------
// Settings from Python values.

/// True for float64, false for float32; anything else is refused.
bool is_double(const py::handle& dtype) {
  const py::dtype type = py::dtype::from_args(py::reinterpret_borrow<py::object>(dtype));
  if (type.kind() == 'f' && type.itemsize() == 8) return true;
  if (type.kind() == 'f' && type.itemsize() == 4) return false;
  throw config_error(concat("bilevel: dtype must be float32 or float64, got ",
                            py::str(type.attr("name")).cast<std::string>()));
}

/// One value or a sequence of values.
std::vector<double> values(const py::handle& object) {
  if (py::isinstance<py::float_>(object) || py::isinstance<py::int_>(object))
    return {object.cast<double>()};
  return object.cast<std::vector<double>>();
}

/// The names bilevel.method accepts as keywords, each with where it goes.
method_options parse_method_options(const std::string& name, const py::kwargs& settings) {
  const auto& registry = method_registry<double>();
  const auto entry = std::find_if(registry.begin(), registry.end(),
                                  [&](const auto& e) { return e.name == name; });
  if (entry == registry.end()) make_method<double>(name);  // throws, listing the names
  method_options o;
  for (const auto& [key_object, value] : settings) {
    std::string key = key_object.cast<std::string>();
    if (key == "lambda_") key = "lambda";  // `lambda` is a Python keyword
    if (std::find(entry->reads.begin(), entry->reads.end(), key) == entry->reads.end()) {
      std::string reads;
      for (const auto& r : entry->reads) reads += concat(reads.empty() ? "" : ", ", r);
      throw config_error(concat("bilevel.method: ", name, " has no setting \"", key,
                                "\" (its settings: ", reads.empty() ? "none" : reads, ")"));
    }
    if (key == "beta") o.beta = values(value);
    else if (key == "lambda") o.lambda = values(value);
    else if (key == "layer_scales") o.layer_scales = values(value);
    else if (key == "gamma") o.gamma = value.cast<double>();
    else if (key == "mu") o.mu = value.cast<double>();
    else if (key == "mu_growth") o.mu_growth = value.cast<double>();
    else if (key == "inner_iterations") o.inner_iterations = value.cast<Index>();
    else if (key == "inner_step") o.inner_step = value.cast<double>();
    else if (key == "tolerance") o.tolerance = value.cast<double>();
    else if (key == "extrapolation") o.extrapolation = value.cast<double>();
    else if (key == "nudged_iterations") o.nudged_iterations = value.cast<Index>();
    else if (key == "one_sided") o.one_sided = value.cast<bool>();
    else if (key == "converged") o.converged = value.cast<bool>();
    else if (key == "particles") o.particles = value.cast<Index>();
    else if (key == "seed") o.seed = value.cast<std::uint64_t>();
    else if (key == "learning_rate") o.learning_rate = value.cast<double>();
    else if (key == "inference")
      o.inference = parse_inference(value.cast<std::string>(), "bilevel.method");
    else if (key == "start")
      o.start = parse_start(value.cast<std::string>(), "bilevel.method");
    else {
      throw config_error(concat("bilevel.method: the setting \"", key,
                                "\" is listed by the registry but not known to the module"));
    }
  }
  return o;
}

// ---------------------------------------------------------------------------------------------
// The objects Python holds.

/// A program of float or double parameters; its parameters are viewed from Python in place.
class py_network {
 public:
  template <Scalar S>
  py_network(network<S> net, std::string description)
      : held_(std::move(net)), description_(std::move(description)) {}

  template <class Body>
  decltype(auto) visit(Body&& body) {
    return std::visit(std::forward<Body>(body), held_);
  }
  template <class Body>
  decltype(auto) visit(Body&& body) const {
    return std::visit(std::forward<Body>(body), held_);
  }
  bool is_double() const { return held_.index() == 1; }
  const char* dtype_name() const { return is_double() ? "float64" : "float32"; }
  const std::string& description() const { return description_; }

 private:
  std::variant<network<float>, network<double>> held_;
  std::string description_;
};

template <class Net>
using scalar_of = typename std::decay_t<Net>::scalar_type;

/// A method by name and settings, built for the scalar of the first network it meets.
class py_method {
 public:
  py_method(std::string name, method_options options)
      : name_(std::move(name)), options_(std::move(options)) {
    typed_ops<double>::method(name_, options_, 0);  // bad settings fail here, not at first use
  }

  const std::string& name() const { return name_; }

  template <Scalar S>
  any_method<S>& for_network(const network<S>& net, const char* where) {
    if (std::holds_alternative<std::monostate>(built_))
      built_ = typed_ops<S>::method(name_, options_, net.depth());
    if (auto* typed = std::get_if<any_method<S>>(&built_)) return *typed;
    throw config_error(concat(where, ": this ", name_, " method was first used with ",
                              std::is_same_v<S, float> ? "float64" : "float32",
                              " networks and keeps its state for them; make another "
                              "bilevel.method for ",
                              std::is_same_v<S, float> ? "float32" : "float64", " ones"));
  }

 private:
  std::string name_;
  method_options options_;
  std::variant<std::monostate, any_method<float>, any_method<double>> built_;
};

/// An optimizer for the parameters of one network's layout and scalar.
class py_optimizer {
 public:
  template <Scalar S>
  py_optimizer(any_optimizer<S> optimizer, Index parameters, std::string name)
      : held_(std::move(optimizer)), parameters_(parameters), name_(std::move(name)) {}

  template <Scalar S>
  any_optimizer<S>& for_network(const network<S>& net, const char* where) {
    auto* typed = std::get_if<any_optimizer<S>>(&held_);
    if (typed == nullptr)
      throw config_error(concat(where, ": the optimizer is for ",
                                std::is_same_v<S, float> ? "float64" : "float32",
                                " parameters, the network has ",
                                std::is_same_v<S, float> ? "float32" : "float64", " ones"));
    detail::require(net.parameter_count() == parameters_, where, "the network's parameter count",
                    concat("the optimizer's ", parameters_), net.parameter_count());
    return *typed;
  }
  double learning_rate() const {
    return std::visit([](const auto& o) { return double(o.learning_rate()); }, held_);
  }
  void set_learning_rate(double rate) {
    std::visit([rate](auto& o) { o.set_learning_rate(decltype(o.learning_rate())(rate)); },
               held_);
  }
  const std::string& name() const { return name_; }

 private:
  std::variant<any_optimizer<float>, any_optimizer<double>> held_;
  Index parameters_;
  std::string name_;
};

/// A pair written in Python (bilevel.pair).
struct py_pair {
  std::shared_ptr<python_functions> functions;
};

/// The hidden layers' pair from bilevel.mlp's and bilevel.network's `activation`: a built-in
/// pair's name or a bilevel.Pair.
hidden_pair hidden_from(const py::handle& activation, double leaky_slope) {
  if (py::isinstance<py_pair>(activation)) {
    const auto& pair = activation.cast<const py_pair&>();
    return {pair.functions->name, {}, pair.functions};
  }
  return {activation.cast<std::string>(), {.leaky_slope = leaky_slope}, nullptr};
}

/// Raises the first error a Python pair of `net` recorded while the library ran it (the pair
/// cannot throw through the library's parallel loops; python_pair.hpp).
template <class Net>
void raise_pair_failures(const Net& net) {
  for (Index k = 0; k < net.depth(); ++k) {
    net.layer(k).visit([](const auto& pair) {
      if constexpr (std::is_same_v<std::decay_t<decltype(pair)>, python_pair>) {
        if (const std::exception_ptr failure = pair.functions().take_failure())
          std::rethrow_exception(failure);
      }
    });
  }
}

/// body() with the GIL released, then the errors of net's Python pairs raised in preference to
/// what the library made of their NaN outputs.
template <class Net, class Body>
void run_released(const Net& net, Body&& body) {
  try {
    py::gil_scoped_release unlocked;
    body();
  } catch (...) {
    raise_pair_failures(net);
    throw;
  }
  raise_pair_failures(net);
}

/// body(net, optimizer, method) with the network typed and the others for it, or null where
/// not given (the checkpoint functions).
template <class Body>
void with_components(const char* where, py_network& n, py_optimizer* opt, py_method* self,
                     Body&& body) {
  n.visit([&](auto& net) {
    body(net, opt ? &opt->for_network(net, where) : nullptr,
         self ? &self->for_network(net, where) : nullptr);
  });
}

/// A writable view of the values at `data` in the shape and order of `layout`, keeping
/// `owner` alive.
template <Scalar S>
py::array view(S* data, const detail::npy_weight_layout& layout, const py::object& owner) {
  const std::vector<py::ssize_t> shape(layout.shape.begin(), layout.shape.end());
  std::vector<py::ssize_t> strides(shape.size());
  py::ssize_t stride = sizeof(S);
  for (std::size_t i = 0; i < shape.size(); ++i) {
    const std::size_t d = layout.fortran ? i : shape.size() - 1 - i;
    strides[d] = stride;
    stride *= shape[d];
  }
  return py::array_t<S>(shape, strides, data, owner);
}

/// Layer k = 1..depth of `net` (as W_k in docs/methods.md and Wk.npy), which must have
/// parameters; returns its 0-based index.
template <class Net>
Index parameterized_layer(const Net& net, Index k, const char* where) {
  detail::require(k >= 1 && k <= net.depth(), where, "the layer k", concat("1 to ", net.depth()),
                  k);
  detail::require(detail::npy_has_parameters(net, k - 1), where, concat("layer ", k),
                  "a layer with parameters", "a pooling layer");
  return k - 1;
}

// ---------------------------------------------------------------------------------------------
// Reports as Python values.

py::dict report_dict(const step_report& r) {
  py::dict d;
  d["loss"] = r.loss;
  d["correct"] = r.correct;
  d["inner_residual"] = r.inner_residual;
  d["inner_iterations"] = r.inner_iterations;
  d["inner_energy"] = r.inner_energy;
  d["unconverged"] = r.unconverged;
  d["safeguarded"] = r.safeguarded;
  d["idle_layers"] = r.idle_layers;
  return d;
}

py::dict epoch_dict(const epoch_result& e) {
  py::dict d;
  d["epoch"] = e.epoch;
  d["loss"] = e.training.loss;
  d["running_error"] = e.training.running_error;
  d["seconds"] = e.training.seconds;
  d["samples_per_second"] = e.training.samples_per_second;
  d["inner_residual"] = e.training.inner_residual;
  d["inner_energy"] = e.training.inner_energy;
  d["unconverged_share"] = e.training.unconverged_share;
  d["safeguarded_share"] = e.training.safeguarded_share;
  d["idle_layer_steps"] = e.training.idle_layer_steps;
  d["train_error"] = e.train_error;
  d["validation_error"] = e.validation_error;
  d["test_error"] = e.test_error;
  return d;
}

/// A (images, labels) pair as a data set of the network's scalar: one copy of the images.
template <Scalar S>
dataset<S> as_dataset(const network<S>& net, const py::handle& images, const py::handle& labels,
                      const char* name) {
  const sample_rows<S> rows(images, net.input_size(), "bilevel.train", name);
  Matrix<S> y = targets<S>(labels, rows.samples(), net.output_size(), "bilevel.train");
  return {Matrix<S>(rows.matrix()), std::move(y)};
}

std::optional<std::pair<py::object, py::object>> optional_set(const py::object& set,
                                                              const char* name) {
  if (set.is_none()) return std::nullopt;
  const auto pair = set.cast<py::tuple>();
  detail::require(pair.size() == 2, "bilevel.train", name, "a pair (images, labels)",
                  concat(pair.size(), " items"));
  return std::pair{py::object(pair[0]), py::object(pair[1])};
}

}  // namespace
}  // namespace bilevel::python

PYBIND11_MODULE(bilevel, m) {
  using namespace bilevel;          // NOLINT: the module's body speaks the library's names
  using namespace bilevel::python;  // NOLINT
  using detail::concat;
  m.doc() = "Inference learning methods (BP, Fenchel BP, CHL, EP, PCN, MAC, LPOM, FLN, AltMin) "
            "of the bilevel C++ library on NumPy arrays; samples are rows.";
  m.attr("__version__") = std::string(bilevel::version);
  register_exceptions(m);

  // --- data -----------------------------------------------------------------------------------
  m.def(
      "load_mnist",
      [](const std::filesystem::path& directory, const std::string& split,
         const py::object& dtype) {
        detail::require(split == "train" || split == "test", "bilevel.load_mnist", "split",
                        "\"train\" or \"test\"", split);
        const auto which = split == "train" ? mnist_split::train : mnist_split::test;
        const auto arrays = [&]<Scalar S>(labelled_set<S> set) {
          py::array_t<std::uint8_t> labels(py::ssize_t(set.labels.size()));
          std::copy(set.labels.begin(), set.labels.end(), labels.mutable_data());
          return py::make_tuple(rows_of<S>(std::move(set.images)), labels);
        };
        if (is_double(dtype)) return arrays(load_mnist_split<double>(directory, which));
        return arrays(load_mnist_split<float>(directory, which));
      },
      py::arg("directory"), py::arg("split") = "train", py::arg("dtype") = "float32",
      "Images (N, rows*cols) in [0, 1] of `dtype` and labels (N,) uint8 of one split "
      "(\"train\" or \"test\") of MNIST or Fashion-MNIST from the idx files in `directory` "
      "(plain or .gz).");

  // --- pairs written in Python ----------------------------------------------------------------
  py::class_<py_pair>(m, "Pair", "An activation pair written in Python (bilevel.pair).")
      .def_property_readonly("name", [](const py_pair& p) { return p.functions->name; })
      .def("__repr__", [](const py_pair& p) { return "<bilevel.Pair " + p.functions->name + ">"; });
  m.def(
      "pair",
      [](const std::string& name, const py::object& f, const py::object& G,
         const py::object& G_conj, const py::object& df, const py::object& vjp,
         const py::object& inverse, const py::object& prox_conj) {
        const auto callable = [&](const py::object& fn, const char* what, bool required) {
          detail::require(required ? PyCallable_Check(fn.ptr()) != 0
                                   : fn.is_none() || PyCallable_Check(fn.ptr()) != 0,
                          "bilevel.pair", what, required ? "callable" : "callable or None",
                          py::str(py::type::of(fn)).cast<std::string>());
          return fn.is_none() ? py::object() : fn;
        };
        detail::require(!name.empty(), "bilevel.pair", "name", "not empty", "\"\"");
        detail::require(!df.is_none() || !vjp.is_none(), "bilevel.pair", "df or vjp",
                        "given (the derivative of f)", "neither");
        auto functions = std::make_shared<python_functions>();
        functions->name = name;
        functions->f = callable(f, "f", true);
        functions->G = callable(G, "G", true);
        functions->G_conj = callable(G_conj, "G_conj", true);
        functions->df = callable(df, "df", false);
        functions->vjp = callable(vjp, "vjp", false);
        functions->inverse = callable(inverse, "inverse", false);
        functions->prox_conj = callable(prox_conj, "prox_conj", false);
        return py_pair{std::move(functions)};
      },
      py::arg("name"), py::arg("f"), py::arg("G"), py::arg("G_conj"), py::kw_only(),
      py::arg("df") = py::none(), py::arg("vjp") = py::none(), py::arg("inverse") = py::none(),
      py::arg("prox_conj") = py::none(),
      "An activation pair of NumPy functions on (B, n) arrays, elementwise: f = G', its "
      "potential G and conjugate G* (inf outside its domain), the derivative df (or vjp(a, v) = "
      "J_f(a)^T v); optional inverse(z) (some a with f(a) = z) and prox_conj(v, t) = "
      "argmin_z t G*(z) + (z - v)^2 / 2, which the library otherwise finds by bisection on f "
      "(some 100 calls of f). Pass it as a network's activation.");
  m.def(
      "check_pair",
      [](const py_pair& pair) {
        pair_check_report report;
        {
          // Released: the checker's loops may call the pair from other threads.
          py::gil_scoped_release unlocked;
          report = check_activation_pair<double>(python_pair(pair.functions));
        }
        if (const std::exception_ptr failure = pair.functions->take_failure())
          std::rethrow_exception(failure);
        return py::make_tuple(report.ok(), report.summary());
      },
      py::arg("pair"),
      "(ok, failures): the library's pair checker (Fenchel-Young, f = G', the derivative, the "
      "inverse and the proximal map, by finite differences) on a Python pair, in float64.");

  // --- networks -------------------------------------------------------------------------------
  py::class_<py_network>(m, "Network",
                         "A layered program (docs/methods.md §1) with one flat parameter buffer.")
      .def_property_readonly("dtype",
                             [](const py_network& n) { return py::dtype(n.dtype_name()); })
      .def_property_readonly("depth", [](const py_network& n) {
        return n.visit([](const auto& net) { return net.depth(); });
      })
      .def_property_readonly("input_size", [](const py_network& n) {
        return n.visit([](const auto& net) { return net.input_size(); });
      })
      .def_property_readonly("output_size", [](const py_network& n) {
        return n.visit([](const auto& net) { return net.output_size(); });
      })
      .def_property_readonly("weight_count", [](const py_network& n) {
        return n.visit([](const auto& net) { return net.weight_count(); });
      })
      .def_property_readonly(
          "parameters",
          [](py::object self) {
            auto& n = self.cast<py_network&>();
            return n.visit([&](auto& net) -> py::array {
              using S = scalar_of<decltype(net)>;
              return py::array_t<S>({py::ssize_t(net.parameter_count())}, {py::ssize_t(sizeof(S))},
                                    net.parameters().data(), self);
            });
          },
          "The flat parameter buffer [W_1 .. W_L | b_1 .. b_L], a writable view (no copy).")
      .def(
          "weights",
          [](py::object self, Index k) {
            return self.cast<py_network&>().visit([&](auto& net) {
              const Index layer = parameterized_layer(net, k, "Network.weights");
              return view(net.weights(layer).data(), detail::npy_weights_layout(net, layer), self);
            });
          },
          py::arg("k"),
          "W_k of layer k = 1..depth (as in docs/methods.md and Wk.npy), a writable view: dense "
          "(n_k, n_{k-1}), convolution (filters, channels, kernel, kernel) as PyTorch's Conv2d.")
      .def(
          "bias",
          [](py::object self, Index k) {
            return self.cast<py_network&>().visit([&](auto& net) {
              const Index layer = parameterized_layer(net, k, "Network.bias");
              return view(net.bias(layer).data(), {{net.bias(layer).size()}, true}, self);
            });
          },
          py::arg("k"),
          "b_k of layer k = 1..depth, a writable view (one value per unit or filter).")
      .def(
          "predict",
          [](py_network& n, const py::handle& x) {
            return n.visit([&](const auto& net) {
              using S = scalar_of<decltype(net)>;
              const sample_rows<S> rows(x, net.input_size(), "Network.predict", "x");
              Matrix<S> output;
              run_released(net,
                           [&] { typed_ops<S>::predict(nullptr, net, rows.matrix(), output); });
              return rows_of<S>(std::move(output));
            });
          },
          py::arg("x"),
          "The last layer's values (B, outputs) of x (B, inputs) by the forward pass.")
      .def("copy", [](const py_network& n) { return py_network(n); },
           "An independent copy: the same layers and parameters in a buffer of its own.")
      .def("__copy__", [](const py_network& n) { return py_network(n); })
      .def("__deepcopy__", [](const py_network& n, const py::dict&) { return py_network(n); })
      .def("__repr__", [](const py_network& n) {
        return n.visit([&](const auto& net) {
          return concat("<bilevel.Network ", n.description(), ", ", n.dtype_name(), ", ",
                        net.parameter_count(), " parameters>");
        });
      });

  const auto make_network = [](auto build, const std::string& description,
                               const py::object& dtype, const std::string& init,
                               std::uint64_t seed) {
    const auto finish = [&]<Scalar S>(network<S> net) {
      typed_ops<S>::initialize(net, init, seed);
      return py_network(std::move(net), description);
    };
    return is_double(dtype) ? finish(build.template operator()<double>())
                            : finish(build.template operator()<float>());
  };
  m.def(
      "mlp",
      [make_network](const std::vector<Index>& sizes, const py::object& activation,
                     const std::string& init, std::uint64_t seed, const py::object& dtype,
                     double leaky_slope) {
        const hidden_pair hidden = hidden_from(activation, leaky_slope);
        std::string text;
        for (const Index size : sizes) text += concat(text.empty() ? "" : "-", size);
        return make_network([&]<Scalar S>() { return typed_ops<S>::mlp(sizes, hidden); },
                            concat("mlp ", text, " ", hidden.name), dtype, init, seed);
      },
      py::arg("sizes"), py::arg("activation") = "relu", py::arg("init") = "glorot",
      py::arg("seed") = 1, py::arg("dtype") = "float32", py::arg("leaky_slope") = 0.01,
      "A multilayer perceptron: sizes = [inputs, hidden..., outputs], `activation` on the "
      "hidden layers, logits out (softmax cross-entropy), parameters drawn by `init` with "
      "`seed` as the C++ trainer does.");
  m.def(
      "network",
      [make_network](const std::string& architecture, const std::vector<Index>& image,
                     const py::object& activation, const std::string& init, std::uint64_t seed,
                     const py::object& dtype, double leaky_slope) {
        detail::require(image.size() == 3, "bilevel.network", "image",
                        "(channels, height, width)", concat(image.size(), " values"));
        const hidden_pair hidden = hidden_from(activation, leaky_slope);
        return make_network(
            [&]<Scalar S>() {
              return typed_ops<S>::classifier({image[0], image[1], image[2]}, architecture,
                                              hidden);
            },
            concat(architecture, " on ", image[0], "x", image[1], "x", image[2], " ",
                   hidden.name),
            dtype, init, seed);
      },
      py::arg("architecture"), py::arg("image") = std::vector<Index>{1, 28, 28},
      py::arg("activation") = "relu", py::arg("init") = "glorot", py::arg("seed") = 1,
      py::arg("dtype") = "float32", py::arg("leaky_slope") = 0.01,
      "A classifier of images (channels, height, width), given as rows of C*H*W values, "
      "through the layers of an architecture string as the C++ trainer's --architecture "
      "(e.g. \"conv6k5p2-pool2-conv16k5-pool2-dense120-dense84-dense10\").");

  // --- methods --------------------------------------------------------------------------------
  py::class_<py_method>(m, "Method", "A training method by name (bilevel.method).")
      .def_property_readonly("name", &py_method::name)
      .def(
          "gradient",
          [](py_method& self, py_network& n, const py::handle& x, const py::handle& y) {
            return n.visit([&](const auto& net) {
              using S = scalar_of<decltype(net)>;
              any_method<S>& method = self.for_network(net, "Method.gradient");
              const sample_rows<S> rows(x, net.input_size(), "Method.gradient", "x");
              const Matrix<S> target =
                  targets<S>(y, rows.samples(), net.output_size(), "Method.gradient");
              Vector<S> gradient;
              step_report report;
              run_released(net, [&] {
                report = typed_ops<S>::gradient(method, net, rows.matrix(), target, gradient);
              });
              warn_unconverged("Method.gradient", self.name(),
                               double(report.unconverged) / double(rows.samples()));
              const py::ssize_t size = gradient.size();
              return py::make_tuple(owning_array(std::move(gradient), {size}),
                                    report_dict(report));
            });
          },
          py::arg("net"), py::arg("x"), py::arg("y"),
          "(g, report): the method's gradient of the batch x (B, inputs) with labels (B,) or "
          "targets (B, outputs), in the layout of Network.parameters, and a dict of what the "
          "step measured (loss, inner iterations, unconverged samples, ...).")
      .def(
          "train_step",
          [](py_method& self, py_network& n, const py::handle& x, const py::handle& y) {
            return n.visit([&](auto& net) {
              using S = scalar_of<decltype(net)>;
              any_method<S>& method = self.for_network(net, "Method.train_step");
              const sample_rows<S> rows(x, net.input_size(), "Method.train_step", "x");
              const Matrix<S> target =
                  targets<S>(y, rows.samples(), net.output_size(), "Method.train_step");
              step_report report;
              run_released(net, [&] {
                report = typed_ops<S>::train_step(method, net, rows.matrix(), target);
              });
              return report_dict(report);
            });
          },
          py::arg("net"), py::arg("x"), py::arg("y"),
          "The method's own training step (mac, lpom, fln, altmin), updating net in place.")
      .def(
          "predict",
          [](py_method& self, py_network& n, const py::handle& x) {
            return n.visit([&](const auto& net) {
              using S = scalar_of<decltype(net)>;
              any_method<S>& method = self.for_network(net, "Method.predict");
              const sample_rows<S> rows(x, net.input_size(), "Method.predict", "x");
              Matrix<S> output;
              run_released(net,
                           [&] { typed_ops<S>::predict(&method, net, rows.matrix(), output); });
              return rows_of<S>(std::move(output));
            });
          },
          py::arg("net"), py::arg("x"),
          "The outputs (B, outputs) as the method predicts (EP: free relaxation; the others: "
          "the forward pass).")
      .def("__repr__",
           [](const py_method& self) { return "<bilevel.Method " + self.name() + ">"; });

  m.def(
      "method",
      [](const std::string& name, const py::kwargs& settings) {
        return py_method(name, parse_method_options(name, settings));
      },
      py::arg("name"),
      "A method by name (bilevel.methods() lists them and their settings); settings as "
      "keywords (lambda as lambda_), unset ones keep the method's converged defaults.");
  m.def("methods", [] {
    py::dict listed;
    for (const auto& entry : method_registry<double>()) {
      py::list reads;
      for (const auto& r : entry.reads) reads.append(std::string(r));
      listed[py::str(std::string(entry.name))] =
          py::make_tuple(std::string(entry.description), reads);
    }
    return listed;
  }, "{name: (description, settings it reads)} of every method.");
  m.def("activations", [] {
    std::vector<std::string> names(activation_names.begin(), activation_names.end());
    return names;
  }, "The names of the built-in activation pairs.");

  // --- optimizers -----------------------------------------------------------------------------
  py::class_<py_optimizer>(m, "Optimizer", "Adam or SGD on a network's flat parameters.")
      .def_property("lr", &py_optimizer::learning_rate, &py_optimizer::set_learning_rate)
      .def(
          "step",
          [](py_optimizer& self, py_network& n, const py::handle& g) {
            n.visit([&](auto& net) {
              using S = scalar_of<decltype(net)>;
              any_optimizer<S>& optimizer = self.for_network(net, "Optimizer.step");
              const auto gradient = contiguous<S>(g, "Optimizer.step", "g");
              if (gradient.ndim() != 1 || gradient.shape(0) != net.parameter_count())
                throw shape_error(concat("Optimizer.step: g must have shape (",
                                         net.parameter_count(),
                                         ",), the network's parameters; got ",
                                         shape_text(gradient)));
              const Eigen::Map<const Vector<S>> values(gradient.data(), net.parameter_count());
              py::gil_scoped_release unlocked;
              optimizer.step(net.parameters(), values);
            });
          },
          py::arg("net"), py::arg("g"), "One update of net's parameters with gradient g.")
      .def("__repr__", [](const py_optimizer& self) {
        return concat("<bilevel.Optimizer ", self.name(), ", lr ", self.learning_rate(), ">");
      });
  m.def(
      "optimizer",
      [](const std::string& name, py_network& n, double lr, double momentum, bool nesterov,
         double weight_decay, double beta1, double beta2, double epsilon, bool decoupled) {
        return n.visit([&](const auto& net) {
          using S = scalar_of<decltype(net)>;
          const Index count = net.parameter_count(), decayed = net.weight_count();
          if (name == "adam") {
            typename adam<S>::settings s;
            s.learning_rate = S(lr);
            s.beta1 = S(beta1);
            s.beta2 = S(beta2);
            s.epsilon = S(epsilon);
            s.weight_decay = S(weight_decay);
            s.decoupled = decoupled;
            return py_optimizer(any_optimizer<S>(adam<S>(s, count, decayed)), count, name);
          }
          detail::require(name == "sgd", "bilevel.optimizer", "name", "\"adam\" or \"sgd\"",
                          name);
          typename sgd<S>::settings s;
          s.learning_rate = S(lr);
          s.momentum = S(momentum);
          s.nesterov = nesterov;
          s.weight_decay = S(weight_decay);
          return py_optimizer(any_optimizer<S>(sgd<S>(s, count, decayed)), count, name);
        });
      },
      py::arg("name"), py::arg("net"), py::arg("lr") = 1e-3, py::arg("momentum") = 0.0,
      py::arg("nesterov") = false, py::arg("weight_decay") = 0.0, py::arg("beta1") = 0.9,
      py::arg("beta2") = 0.999, py::arg("epsilon") = 1e-8, py::arg("decoupled") = false,
      "\"adam\" (lr, beta1, beta2, epsilon, weight_decay, decoupled for AdamW) or \"sgd\" (lr, "
      "momentum, nesterov, weight_decay) for net's parameters; weight decay reaches the weights "
      "only.");

  // --- the run loop ---------------------------------------------------------------------------
  m.def(
      "train",
      [](py_network& n, py_method& self, py_optimizer& opt, const py::handle& images,
         const py::handle& labels, Index epochs, Index batch, std::uint64_t seed,
         const py::object& test, const py::object& validation, const std::string& step,
         bool evaluate_train, bool flush, const py::object& callback) {
        detail::require(step == "gradient" || step == "native", "bilevel.train", "step_mode",
                        "\"gradient\" or \"native\"", step);
        const auto test_set = optional_set(test, "test");
        const auto validation_set = optional_set(validation, "validation");
        return n.visit([&](auto& net) {
          using S = scalar_of<decltype(net)>;
          any_method<S>& method = self.for_network(net, "bilevel.train");
          any_optimizer<S>& optimizer = opt.for_network(net, "bilevel.train");
          const dataset<S> train_data = as_dataset(net, images, labels, "images");
          std::optional<dataset<S>> test_data, validation_data;
          if (test_set)
            test_data = as_dataset(net, test_set->first, test_set->second, "test images");
          if (validation_set)
            validation_data =
                as_dataset(net, validation_set->first, validation_set->second, "validation images");
          train_settings settings;
          settings.epochs = epochs;
          settings.batch = batch;
          settings.seed = seed;
          settings.mode = step == "native" ? step_mode::native : step_mode::gradient;
          settings.evaluate_train = evaluate_train;
          settings.flush_denormals = flush;
          py::list history;
          const auto finished = [&](const epoch_result& result) {
            py::gil_scoped_acquire locked;
            py::dict entry = epoch_dict(result);
            history.append(entry);
            warn_unconverged(concat("bilevel.train: epoch ", result.epoch), self.name(),
                             result.training.unconverged_share);
            if (!callback.is_none()) callback(entry);
          };
          const auto interrupted = [] {  // Ctrl-C ends the run after the current batch
            py::gil_scoped_acquire locked;
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
          };
          const run_data<S> data{&train_data, test_data ? &*test_data : nullptr,
                                 validation_data ? &*validation_data : nullptr};
          run_released(net, [&] {
            typed_ops<S>::train(net, method, optimizer, data, settings, finished, interrupted);
          });
          return history;
        });
      },
      py::arg("net"), py::arg("method"), py::arg("optimizer"), py::arg("images"),
      py::arg("labels"), py::kw_only(), py::arg("epochs") = 1, py::arg("batch") = 50,
      py::arg("seed") = 0, py::arg("test") = py::none(), py::arg("validation") = py::none(),
      py::arg("step_mode") = "gradient", py::arg("evaluate_train") = false,
      py::arg("flush_denormals") = true, py::arg("callback") = py::none(),
      "The library's run loop: `epochs` passes over (images, labels) in batches of `batch`, "
      "shuffled by `seed`, with the method's gradient and the optimizer (step_mode \"native\": "
      "the method's own step). test and validation: (images, labels) evaluated after every "
      "epoch. Returns one dict per epoch, also passed to callback(dict). The images are copied "
      "once; subnormal floats are flushed to zero during the run unless flush_denormals=False.");

  // --- files ----------------------------------------------------------------------------------
  m.def(
      "save_checkpoint",
      [](const std::filesystem::path& path, py_network& n, py_optimizer* opt, py_method* self) {
        with_components("bilevel.save_checkpoint", n, opt, self,
                        [&](auto& net, auto* optimizer, auto* method) {
                          typed_ops<scalar_of<decltype(net)>>::save(path, net, optimizer, method);
                        });
      },
      py::arg("path"), py::arg("net"), py::arg("optimizer") = nullptr, py::arg("method") = nullptr,
      "Writes net (and the optimizer's and method's state, if given) to path atomically.");
  m.def(
      "load_checkpoint",
      [](const std::filesystem::path& path, py_network& n, py_optimizer* opt, py_method* self) {
        with_components("bilevel.load_checkpoint", n, opt, self,
                        [&](auto& net, auto* optimizer, auto* method) {
                          typed_ops<scalar_of<decltype(net)>>::load(path, net, optimizer, method);
                        });
      },
      py::arg("path"), py::arg("net"), py::arg("optimizer") = nullptr, py::arg("method") = nullptr,
      "Restores what save_checkpoint wrote with the same components, all or nothing; the "
      "parameters view stays valid.");
  m.def(
      "export_npy",
      [](const std::filesystem::path& directory, const py_network& n) {
        n.visit([&](const auto& net) {
          typed_ops<scalar_of<decltype(net)>>::export_npy(directory, net);
        });
      },
      py::arg("directory"), py::arg("net"),
      "Writes each layer's W and b as .npy files and a manifest.json (README \"NumPy export\").");
  m.def(
      "import_npy",
      [](const std::filesystem::path& directory, py_network& n) {
        n.visit([&](auto& net) {
          typed_ops<scalar_of<decltype(net)>>::import_npy(directory, net);
        });
      },
      py::arg("directory"), py::arg("net"),
      "Reads what export_npy wrote into net, all or nothing.");

  // --- the machine ----------------------------------------------------------------------------
  m.def("set_threads", [](int threads) {
    detail::require(threads > 0, "bilevel.set_threads", "threads", "> 0", threads);
    Eigen::setNbThreads(threads);
  }, py::arg("threads"), "The threads of the library's matrix products.");
  m.def("threads", [] { return Eigen::nbThreads(); });
  m.def("flush_denormals", [](bool flush) { return bilevel::flush_denormals(flush); },
        py::arg("flush") = true,
        "Flush subnormal floats to zero in this thread (and the OpenMP pool), or restore "
        "gradual underflow; bilevel.train does it for its run by itself.");
}
