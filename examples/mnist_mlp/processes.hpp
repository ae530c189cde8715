#pragma once
// The processes the trainer runs on: one, or every process of an MPI job when the trainer was
// built with -DBILEVEL_WITH_MPI=ON and started by mpirun (bilevel/mpi/). Under MPI every
// process trains the same model on its shard of every batch (mpi::data_parallel); rank 0 alone
// prints, reads and writes checkpoints, and writes the CSV file.

#include <cstdint>
#include <iostream>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "bilevel/core/error.hpp"
#include "bilevel/io/checkpoint.hpp"
#include "bilevel/train/dataset.hpp"
#include "bilevel/train/trainer.hpp"
#include "options.hpp"

#ifdef MNIST_MLP_WITH_MPI
#include "bilevel/mpi/data_parallel.hpp"
#endif

namespace mnist_mlp {

class processes {
 public:
  /// Starts MPI when the trainer was started by an MPI launcher; a plain single process
  /// otherwise.
  processes([[maybe_unused]] int& argc, [[maybe_unused]] char**& argv) {
#ifdef MNIST_MLP_WITH_MPI
    if (bilevel::mpi::session::launched()) {
      session_ = std::make_unique<bilevel::mpi::session>(argc, argv);
      world_ = std::make_unique<bilevel::mpi::communicator>();
    }
#endif
  }

  bool distributed() const {
#ifdef MNIST_MLP_WITH_MPI
    return world_ != nullptr;
#else
    return false;
#endif
  }
  int size() const {
#ifdef MNIST_MLP_WITH_MPI
    if (distributed()) return communicator().size();
#endif
    return 1;
  }
  /// The process that prints, reads and writes files.
  bool root() const {
#ifdef MNIST_MLP_WITH_MPI
    if (distributed()) return communicator().is_root();
#endif
    return true;
  }

  /// Throws config_error on every process unless `bytes` (of flags, data) are the same on all.
  void require_same(std::span<const std::uint8_t> bytes, std::string_view what) const {
#ifdef MNIST_MLP_WITH_MPI
    if (distributed()) communicator().require_same(bilevel::detail::crc32_of(bytes), "setup", what);
#else
    static_cast<void>(bytes), static_cast<void>(what);
#endif
  }

  /// Throws config_error on every process unless every flag of `flags` has the same value on
  /// all of them; the message names each flag that differs.
  void require_same_flags(const std::vector<flag_value>& flags) const {
#ifdef MNIST_MLP_WITH_MPI
    if (!distributed()) return;
    std::string differing;
    for (const flag_value& flag : flags) {
      const std::string text = flag.name + '=' + flag.value;
      if (!communicator().same_everywhere(bilevel::detail::crc32_of(
              {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()})))
        differing += (differing.empty() ? "" : ", ") + flag.name;
    }
    if (!differing.empty())
      throw bilevel::config_error(bilevel::detail::concat(
          "setup: the ", size(), " processes were started with different training flags: ",
          differing, " (all but --data, --save, --resume's path, --csv, --quiet and --threads "
          "must be the same)"));
#else
    static_cast<void>(flags);
#endif
  }

  /// Gives every process rank 0's state of `components`.
  template <class... Components>
  void share([[maybe_unused]] Components&... components) const {
#ifdef MNIST_MLP_WITH_MPI
    if (distributed()) bilevel::mpi::broadcast_state(communicator(), components...);
#endif
  }

  /// `body(stepper)` with the method itself on one process, or with the method wrapped in
  /// mpi::data_parallel on several.
  template <class S, class Method, class Body>
  int with_stepper(Method& method, Body&& body) const {
#ifdef MNIST_MLP_WITH_MPI
    if (distributed()) {
      bilevel::mpi::data_parallel<S, Method> parallel(method, communicator());
      return body(parallel);
    }
#endif
    return body(method);
  }

  /// Classification error of `set`: on several processes, each evaluates its shard.
  template <class Program, class Method>
  double error(const Program& net, const bilevel::dataset<typename Program::scalar_type>& set,
               Method& method) const {
#ifdef MNIST_MLP_WITH_MPI
    if (distributed()) return bilevel::mpi::classification_error(communicator(), net, set, method);
#endif
    return bilevel::classification_error(net, set, method);
  }

  /// Reports a failure and ends the run with `status`: on several processes it ends every one
  /// of them (another may be waiting for this one in a collective operation); returns the
  /// status to exit with otherwise.
  int fail(std::string_view message, int status) const {
#ifdef MNIST_MLP_WITH_MPI
    if (distributed()) communicator().abort("mnist_mlp", message, status);
#endif
    std::cerr << "mnist_mlp: " << message << '\n';
    return status;
  }

 private:
#ifdef MNIST_MLP_WITH_MPI
  const bilevel::mpi::communicator& communicator() const { return *world_; }
  // Declared in this order so that the communicator is freed before MPI is finalized.
  std::unique_ptr<bilevel::mpi::session> session_;
  std::unique_ptr<bilevel::mpi::communicator> world_;
#endif
};

}  // namespace mnist_mlp
