// gradient_fidelity: for one fixed MNIST batch and network, how close each method's gradient
// is to BP's (cosine similarity and relative error), over a sweep of beta or its equivalent
// (1/lambda for LPOM and FLN, 1/mu for MAC and AltMin). Prints a markdown table on stdout and
// writes the same rows as CSV with --csv.
//
// EP is left out: its model is the Hopfield energy, whose gradient is not the feed-forward BP
// gradient. Z-IL has no spacing; it is BP exactly, so it gets one row.

#include <CLI/CLI.hpp>
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

struct row {
  std::string method, parameter;
  double spacing, cosine, relative_error, inner_residual;
};

template <class Method, class Program>
row measure(const std::string& parameter, double spacing, Method method, const Program& net,
            const Matrix<S>& x, const Matrix<S>& y, const Vector<S>& reference) {
  Vector<S> gradient;
  const bilevel::step_report report = method.gradient(net, x, y, gradient);
  return {method.name(),
          parameter,
          spacing,
          gradient.dot(reference) / (gradient.norm() * reference.norm()),
          (gradient - reference).norm() / reference.norm(),
          report.inner_residual};
}

}  // namespace

int main(int argc, char** argv) {
  std::string data = "data/mnist", csv, layers = "784,256,128,64,10";
  Index batch = 64;
  std::uint64_t seed = 1;
  CLI::App app{"Cosine similarity and relative error of each method's gradient to BP's on one "
               "MNIST batch, over a sweep of beta (or 1/lambda, 1/mu)",
               "gradient_fidelity"};
  app.add_option("--data", data, "MNIST directory")->capture_default_str();
  app.add_option("--batch", batch, "Samples in the batch (the first ones of the training file)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--layers", layers, "Layer sizes (ReLU hidden layers)")->capture_default_str();
  app.add_option("--seed", seed, "Seed of the Glorot initialisation")->capture_default_str();
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
    std::vector<Index> sizes;
    for (std::size_t start = 0; start <= layers.size();) {
      const std::size_t end = std::min(layers.find(',', start), layers.size());
      sizes.push_back(std::stol(layers.substr(start, end - start)));
      start = end + 1;
    }
    const auto mnist = bilevel::load_mnist<S>(data);
    bilevel::detail::require(batch <= mnist.train.images.cols(), "gradient_fidelity", "--batch",
                             "at most the training set size", batch);
    const auto set = bilevel::make_dataset<S>(
        mnist.train.images.leftCols(batch),
        std::vector<int>(mnist.train.labels.begin(), mnist.train.labels.begin() + batch), 10);
    auto net = bilevel::make_mlp<S, bilevel::relu>(sizes);
    bilevel::random_source random(seed);
    net.initialize(bilevel::init_scheme::glorot_uniform, random);

    Vector<S> reference;
    bilevel::bp<S>{}.gradient(net, set.x, set.y, reference);

    std::vector<row> rows;
    const std::vector<double> spacings = {10, 1, 0.1, 0.01, 0.001};
    for (const double beta : spacings) {
      rows.push_back(measure("beta", beta, bilevel::fenchel_bp<S>(beta), net, set.x, set.y, reference));
      typename bilevel::chl<S>::settings chl;
      chl.beta = beta;
      chl.max_sweeps = 200;
      chl.tolerance = 1e-3 * beta;
      rows.push_back(measure("beta", beta, bilevel::chl<S>(chl), net, set.x, set.y, reference));
    }
    for (const double spacing : spacings) {
      bilevel::lifted_settings<S> lifted;
      lifted.lambda = {1 / spacing};
      lifted.sweeps = 50;
      lifted.block_iterations = 20;
      rows.push_back(measure("1/lambda", spacing, bilevel::lpom<S>(lifted), net, set.x, set.y, reference));
      lifted.block_tolerance = 1e-9;
      rows.push_back(measure("1/lambda", spacing, bilevel::fln<S>(lifted), net, set.x, set.y, reference));
      typename bilevel::mac<S>::settings mac;
      mac.mu = 1 / spacing;
      mac.z_iterations = 300;
      rows.push_back(measure("1/mu", spacing, bilevel::mac<S>(mac), net, set.x, set.y, reference));
    }
    rows.push_back(measure("-", 0, bilevel::pcn<S>(), net, set.x, set.y, reference));
    rows.push_back(measure("-", 0, bilevel::pcn<S>::zil(), net, set.x, set.y, reference));

    std::cout << "| method | parameter | value | cosine to BP | relative error | inner residual |\n"
              << "|---|---|---|---|---|---|\n";
    for (const row& r : rows) {
      std::cout << "| " << r.method << " | " << r.parameter << " | "
                << (r.parameter == "-" ? std::string("-") : (std::ostringstream() << r.spacing).str())
                << " | " << std::fixed << std::setprecision(6) << r.cosine << " | "
                << std::scientific << std::setprecision(2) << r.relative_error << " | ";
      if (std::isfinite(r.inner_residual))
        std::cout << r.inner_residual;
      else
        std::cout << '-';  // no inner solver
      std::cout << " |\n" << std::defaultfloat;
    }
    if (!csv.empty()) {
      const std::filesystem::path target(csv), temporary(csv + ".tmp");
      {
        std::ofstream out(temporary);
        out << "method,parameter,value,cosine,relative_error,inner_residual\n"
            << std::setprecision(10);
        for (const row& r : rows) {
          out << r.method << ',' << r.parameter << ',' << r.spacing << ',' << r.cosine << ','
              << r.relative_error << ',';
          if (std::isfinite(r.inner_residual)) out << r.inner_residual;
          out << '\n';
        }
        if (!out.flush())
          throw bilevel::data_error("gradient_fidelity: cannot write " + temporary.string());
      }
      std::filesystem::rename(temporary, target);
    }
    return 0;
  } catch (const bilevel::config_error& e) {
    std::cerr << "gradient_fidelity: " << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "gradient_fidelity: " << e.what() << '\n';
    return 1;
  }
}
