// gradient_fidelity: on one fixed MNIST batch and network, how close each method's gradient is
// to BP's, layer by layer, as its spacing shrinks (beta; 1/lambda for LPOM and FLN; 1/mu for
// MAC; PCN's loss weight s), every method at its DEFAULT settings with only the spacing set
// (docs/methods.md §5.6b: every layer's relative error should fall linearly with the spacing
// down to the floor its solver's tolerance sets). Also how many inner iterations each took, how
// many samples its solver left unconverged, and what its step cost in BP steps, measured in the
// same run. Prints a markdown table on stdout and writes one CSV row per method, spacing and
// layer (layer 0: the whole gradient) with --csv.
//
// Z-IL has no spacing and is BP exactly: one row. AltMin's converged codes do not tend to BP
// (docs/methods.md §5.6b): one row at its defaults, to show how far its per-layer directions are
// from BP's. EP trains a Hopfield energy, which has no feed-forward BP gradient: it runs on the
// same shape with sigmoid hidden layers (EP refuses ReLU, whose energy is unbounded) and is
// compared with central differences of its own objective C(s^0(theta)), the cost at the free
// fixed point, along random directions in each layer's parameters.

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bilevel/bilevel.hpp"

namespace {

using S = double;
using bilevel::Index;
using bilevel::Matrix;
using bilevel::Vector;
using net_type = bilevel::mlp<S, bilevel::relu>;

struct row {
  std::string method, parameter;
  double spacing;
  std::vector<double> layer_error, layer_cosine;  ///< per layer's weights and biases together
  double cosine, relative_error;
  Index iterations, unconverged;
  double bp_steps;  ///< the step's time over one BP step's
};

double cosine(const Vector<S>& a, const Vector<S>& b) { return a.dot(b) / (a.norm() * b.norm()); }

using sigmoid_net = bilevel::mlp<S, bilevel::sigmoid>;

/// Layer k's slice of a gradient: its weights and its bias, stacked.
template <class Program>
Vector<S> layer_slice(const Program& net, Index k, const Vector<S>& gradient) {
  const auto& layer = net.layer(k);
  Vector<S> out(layer.inputs() * layer.outputs() + layer.outputs());
  out << layer.weights(gradient).reshaped(), layer.bias(gradient);
  return out;
}

/// Seconds per call of `step`, over enough calls to last about `budget` seconds.
template <class Step>
double seconds_per_call(Step&& step, double budget = 0.2) {
  using clock = std::chrono::steady_clock;
  Index calls = 0;
  const auto start = clock::now();
  double elapsed = 0;
  do {
    step();
    ++calls;
    elapsed = std::chrono::duration<double>(clock::now() - start).count();
  } while (elapsed < budget);
  return elapsed / double(calls);
}

template <class Method>
row measure(const std::string& parameter, double spacing, Method method, const net_type& net,
            const Matrix<S>& x, const Matrix<S>& y, const Vector<S>& reference, double bp_seconds) {
  Vector<S> gradient;
  const bilevel::step_report report = method.gradient(net, x, y, gradient);
  row r{method.name(), parameter, spacing, {}, {}, cosine(gradient, reference),
        (gradient - reference).norm() / reference.norm(), report.inner_iterations,
        report.unconverged, 0};
  for (Index k = 0; k < net.depth(); ++k) {
    const Vector<S> got = layer_slice(net, k, gradient), want = layer_slice(net, k, reference);
    r.layer_error.push_back((got - want).norm() / want.norm());
    r.layer_cosine.push_back(cosine(got, want));
  }
  r.bp_steps = seconds_per_call([&] { method.gradient(net, x, y, gradient); }) / bp_seconds;
  return r;
}

/// EP's converged, symmetric estimate at spacing beta against C(s^0(theta))'s directional
/// derivatives, by central differences with the free phase relaxed to 1e-13, along `directions`
/// random unit directions per layer: per layer, the relative error and cosine between the
/// estimate's directional derivatives and the differences' (layer 0: all directions together).
row measure_ep(double beta, const sigmoid_net& net, const Matrix<S>& x, const Matrix<S>& y,
               double bp_seconds, Index directions = 6, std::uint64_t seed = 7) {
  using method_type = bilevel::ep<S>;
  typename method_type::settings config;
  config.mode = method_type::relaxation::converged;
  config.beta = S(beta);
  method_type method(config);
  Vector<S> gradient;
  const bilevel::step_report report = method.gradient(net, x, y, gradient);
  row r{"ep", "beta", beta, {}, {}, 0, 0, report.inner_iterations, report.unconverged, 0};

  typename method_type::settings tight = config;
  tight.free_stopping = {S(1e-13), 100000};
  method_type relaxed(tight);
  sigmoid_net moved = net;
  Matrix<S> output;
  const auto cost = [&] {
    relaxed.predict(moved, x, output);
    bilevel::detail::require(relaxed.last_unconverged() == 0, "gradient_fidelity",
                             "EP's free phase at tolerance 1e-13", "converged",
                             relaxed.last_unconverged());
    return double(moved.loss_values(output, y).mean());
  };
  const double step = 1e-5;
  bilevel::random_source random(seed);
  Vector<S> all_estimated(net.depth() * directions), all_differenced(net.depth() * directions);
  for (Index k = 0; k < net.depth(); ++k) {
    Vector<S> estimated(directions), differenced(directions);
    for (Index i = 0; i < directions; ++i) {
      Vector<S> direction = Vector<S>::Zero(net.parameter_count());
      auto weights = moved.layer(k).weights(direction);
      auto bias = moved.layer(k).bias(direction);
      for (Index j = 0; j < weights.size(); ++j) weights.data()[j] = S(random.normal());
      for (Index j = 0; j < bias.size(); ++j) bias(j) = S(random.normal());
      direction.normalize();
      moved.parameters() = net.parameters() + step * direction;
      const double up = cost();
      moved.parameters() = net.parameters() - step * direction;
      const double down = cost();
      estimated(i) = gradient.dot(direction);
      differenced(i) = (up - down) / (2 * step);
    }
    moved.parameters() = net.parameters();
    r.layer_error.push_back((estimated - differenced).norm() / differenced.norm());
    r.layer_cosine.push_back(cosine(estimated, differenced));
    all_estimated.segment(k * directions, directions) = estimated;
    all_differenced.segment(k * directions, directions) = differenced;
  }
  r.cosine = cosine(all_estimated, all_differenced);
  r.relative_error = (all_estimated - all_differenced).norm() / all_differenced.norm();
  r.bp_steps = seconds_per_call([&] { method.gradient(net, x, y, gradient); }) / bp_seconds;
  return r;
}

std::string spacing_text(const row& r) {
  return r.parameter == "-" ? std::string("-") : (std::ostringstream() << r.spacing).str();
}

void write_csv(const std::string& path, const std::vector<row>& rows) {
  const std::filesystem::path target(path), temporary(path + ".tmp");
  {
    std::ofstream out(temporary);
    out << "method,parameter,value,layer,cosine,relative_error,iterations,unconverged,bp_steps\n"
        << std::setprecision(10);
    for (const row& r : rows) {
      const auto line = [&](Index layer, double c, double e) {
        out << r.method << ',' << r.parameter << ',' << r.spacing << ',' << layer << ',' << c
            << ',' << e << ',' << r.iterations << ',' << r.unconverged << ',' << r.bp_steps
            << '\n';
      };
      line(0, r.cosine, r.relative_error);
      for (std::size_t k = 0; k < r.layer_error.size(); ++k)
        line(Index(k + 1), r.layer_cosine[k], r.layer_error[k]);
    }
    if (!out.flush()) throw bilevel::data_error("gradient_fidelity: cannot write " + temporary.string());
  }
  std::filesystem::rename(temporary, target);
}

}  // namespace

int main(int argc, char** argv) {
  std::string data = "data/mnist", csv;
  Index batch = 50;
  std::uint64_t seed = 1;
  std::vector<double> spacings = {1, 0.1, 0.01, 0.001, 0.0001};
  CLI::App app{"Per-layer relative error and cosine of each method's gradient to BP's on one "
               "MNIST batch, at each method's default settings, over a sweep of its spacing",
               "gradient_fidelity"};
  app.add_option("--data", data, "MNIST directory")->capture_default_str();
  app.add_option("--batch", batch, "Samples in the batch (the first ones of the training file)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--seed", seed, "Seed of the Glorot initialisation")->capture_default_str();
  app.add_option("--spacings", spacings, "Spacings to sweep (beta, 1/lambda, 1/mu, s)")
      ->check(CLI::PositiveNumber)
      ->delimiter(',');
  app.add_option("--csv", csv, "Also write the rows to this CSV file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "gradient_fidelity: " << e.what() << " (see --help)\n";
    return 2;
  }

  try {
    const auto mnist = bilevel::load_mnist<S>(data);
    bilevel::detail::require(batch <= mnist.train.images.cols(), "gradient_fidelity", "--batch",
                             "at most the training set size", batch);
    const auto set = bilevel::make_dataset<S>(
        mnist.train.images.leftCols(batch),
        std::vector<int>(mnist.train.labels.begin(), mnist.train.labels.begin() + batch), 10);
    auto net = bilevel::make_mlp<S, bilevel::relu>({784, 256, 128, 64, 10});
    bilevel::random_source random(seed);
    net.initialize(bilevel::init_scheme::glorot_uniform, random);

    Vector<S> reference;
    bilevel::bp<S> backprop;
    backprop.gradient(net, set.x, set.y, reference);
    const double bp_seconds =
        seconds_per_call([&] { backprop.gradient(net, set.x, set.y, reference); });

    std::vector<row> rows;
    const auto add = [&](const std::string& parameter, double spacing, auto method) {
      rows.push_back(measure(parameter, spacing, std::move(method), net, set.x, set.y, reference,
                             bp_seconds));
      std::cerr << "gradient_fidelity: " << rows.back().method << " at " << spacing << '\n';
    };
    for (const double s : spacings) {
      add("beta", s, bilevel::fenchel_bp<S>(s));
      add("beta", s, bilevel::chl<S>({.beta = s}));
      add("1/lambda", s, bilevel::lpom<S>({.lambda = {1 / s}}));
      auto fln = bilevel::fln<S>::default_settings();
      fln.lambda = {1 / s};
      add("1/lambda", s, bilevel::fln<S>(fln));
      add("1/mu", s, bilevel::mac<S>({.mu = 1 / s}));
      add("s", s, bilevel::pcn<S>({.spacing = s}));
    }
    add("-", 0, bilevel::pcn<S>::zil());
    add("mu", double(bilevel::altmin<S>().config().mu), bilevel::altmin<S>());

    // EP on the same shape with sigmoid hidden layers, against its own objective.
    auto hopfield = bilevel::make_mlp<S, bilevel::sigmoid>({784, 256, 128, 64, 10});
    hopfield.parameters() = net.parameters();
    for (const double s : spacings) {
      rows.push_back(measure_ep(s, hopfield, set.x, set.y, bp_seconds));
      std::cerr << "gradient_fidelity: ep at " << s << '\n';
    }

    std::cout << "| method | spacing | rel. error layer 1 | layer 2 | layer 3 | layer 4 | cosine "
                 "| inner iterations | unconverged | step (BP steps) |\n"
              << "|---|---|---|---|---|---|---|---|---|---|\n";
    for (const row& r : rows) {
      std::cout << "| " << r.method << " (" << r.parameter << ") | " << spacing_text(r) << " | "
                << std::scientific << std::setprecision(2);
      for (const double e : r.layer_error) std::cout << e << " | ";
      std::cout << std::fixed << std::setprecision(6) << r.cosine << " | " << r.iterations
                << " | " << r.unconverged << " | " << std::setprecision(1) << r.bp_steps
                << " |\n"
                << std::defaultfloat;
    }
    if (!csv.empty()) write_csv(csv, rows);
    return 0;
  } catch (const bilevel::config_error& e) {
    std::cerr << "gradient_fidelity: " << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "gradient_fidelity: " << e.what() << '\n';
    return 1;
  }
}
