#pragma once
/// \file
/// The MPI side of data-parallel training: the MPI session of a program and a communicator
/// with the few collective operations the library needs (in-place sums, broadcast of bytes,
/// agreement checks). Every MPI call is checked: a failure throws bilevel::error naming the
/// call and MPI's message instead of MPI's default of killing the job without one.
///
/// Needs <mpi.h> and an MPI library: link the `bilevel::mpi` CMake target (built with
/// -DBILEVEL_WITH_MPI=ON). Uses MPI's C API only (the C++ bindings are deprecated).

#include <mpi.h>

#include <algorithm>
#include <climits>
#include <concepts>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace bilevel::mpi {

namespace detail {

/// Throws bilevel::error unless `code` is MPI_SUCCESS.
inline void check(int code, std::string_view function, std::string_view call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw error(bilevel::detail::concat(function, ": ", call, " failed: ",
                                      std::string_view(text, std::size_t(length))));
}

inline bool finalized() {
  int done = 0;
  MPI_Finalized(&done);
  return done != 0;
}

template <Scalar S>
MPI_Datatype datatype() {
  if constexpr (std::is_same_v<S, float>) return MPI_FLOAT;
  else if constexpr (std::is_same_v<S, double>) return MPI_DOUBLE;
  else return MPI_LONG_DOUBLE;
}

}  // namespace detail

/// MPI for the lifetime of this object: MPI_Init_thread in the constructor, MPI_Finalize in the
/// destructor. One per program, made in main before anything else touches MPI. Asks for
/// MPI_THREAD_FUNNELED: OpenMP threads compute, only the main thread communicates.
class session {
 public:
  session(int& argc, char**& argv) {
    int provided = 0;
    detail::check(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "mpi::session",
                  "MPI_Init_thread");
  }
  ~session() {
    if (!detail::finalized()) MPI_Finalize();
  }
  session(const session&) = delete;
  session& operator=(const session&) = delete;

  /// Whether this process was started by an MPI launcher (mpirun, mpiexec, srun), judged by
  /// the environment those launchers set. A program can then run as a plain single process,
  /// without starting MPI at all, when it was not.
  static bool launched() {
    for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
      if (std::getenv(variable) != nullptr) return true;
    return false;
  }
};

/// A private duplicate of a communicator (MPI_COMM_WORLD by default), so the library's messages
/// never mix with the caller's, with errors returned instead of fatal. Not copyable; the
/// operations are collective: every process of the communicator calls them in the same order.
class communicator {
 public:
  explicit communicator(MPI_Comm parent = MPI_COMM_WORLD) {
    detail::check(MPI_Comm_dup(parent, &comm_), "mpi::communicator", "MPI_Comm_dup");
    detail::check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "mpi::communicator",
                  "MPI_Comm_set_errhandler");
    detail::check(MPI_Comm_rank(comm_, &rank_), "mpi::communicator", "MPI_Comm_rank");
    detail::check(MPI_Comm_size(comm_, &size_), "mpi::communicator", "MPI_Comm_size");
  }
  ~communicator() {
    if (comm_ != MPI_COMM_NULL && !detail::finalized()) MPI_Comm_free(&comm_);
  }
  communicator(const communicator&) = delete;
  communicator& operator=(const communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }
  MPI_Comm get() const { return comm_; }

  /// Replaces every entry by its sum over the processes: one MPI_Allreduce, in place.
  template <class T>
    requires Scalar<T> || std::same_as<T, std::int64_t> || std::same_as<T, std::uint64_t>
  void sum(std::span<T> values) const {
    reduce(values, MPI_SUM, "mpi::communicator::sum");
  }

  /// Whether `value` is the same on every process (every process gets the same answer).
  bool same_everywhere(std::uint64_t value) const {
    // max(v) and max(~v) = ~min(v) in one call: equal everywhere iff max == min.
    std::uint64_t extremes[2] = {value, ~value};
    reduce(std::span<std::uint64_t>(extremes), MPI_MAX, "mpi::communicator::same_everywhere");
    return extremes[0] == ~extremes[1];
  }

  /// Whether `condition` holds on every process (every process gets the same answer).
  bool all(bool condition) const {
    std::int64_t failed[1] = {condition ? 0 : 1};
    sum(std::span<std::int64_t>(failed));
    return failed[0] == 0;
  }

  /// Throws config_error on every process unless `value` (a fingerprint of `what`) is the same
  /// on all of them.
  void require_same(std::uint64_t value, std::string_view function, std::string_view what) const {
    if (!same_everywhere(value))
      throw config_error(bilevel::detail::concat(function, ": the ", size_,
                                                 " processes disagree on ", what, " (rank ",
                                                 rank_, " has ", value, ")"));
  }

  /// `bytes` of process `root`, on every process.
  std::vector<std::uint8_t> broadcast(std::vector<std::uint8_t> bytes, int root = 0) const {
    constexpr const char* function = "mpi::communicator::broadcast";
    std::uint64_t size = bytes.size();
    detail::check(MPI_Bcast(&size, 1, MPI_UINT64_T, root, comm_), function, "MPI_Bcast");
    bytes.resize(std::size_t(size));
    for (std::uint64_t done = 0; done < size;) {  // MPI counts are int: chunks below 2 GiB
      const int count = int(std::min<std::uint64_t>(size - done, INT_MAX));
      detail::check(MPI_Bcast(bytes.data() + done, count, MPI_BYTE, root, comm_), function,
                    "MPI_Bcast");
      done += std::uint64_t(count);
    }
    return bytes;
  }

  /// Prints "<program> (rank r of P): <message>" to stderr and ends every process of the job
  /// with `status`: for a failure on some processes while the others may be waiting in a
  /// collective operation, which would otherwise never return.
  [[noreturn]] void abort(std::string_view program, std::string_view message, int status) const {
    // One write, so that the lines of several failing processes do not interleave.
    const std::string line = bilevel::detail::concat(program, " (rank ", rank_, " of ", size_,
                                                     "): ", message, "\n");
    std::fwrite(line.data(), 1, line.size(), stderr);
    std::fflush(stderr);
    MPI_Abort(comm_, status);
    std::abort();  // MPI_Abort does not return; this is for a library that would
  }

 private:
  template <class T>
  static MPI_Datatype type_of() {
    if constexpr (std::same_as<T, std::int64_t>) return MPI_INT64_T;
    else if constexpr (std::same_as<T, std::uint64_t>) return MPI_UINT64_T;
    else return detail::datatype<T>();
  }

  template <class T>
  void reduce(std::span<T> values, MPI_Op operation, const char* function) const {
    for (std::size_t done = 0; done < values.size();) {
      const int count = int(std::min<std::size_t>(values.size() - done, INT_MAX));
      detail::check(MPI_Allreduce(MPI_IN_PLACE, values.data() + done, count, type_of<T>(),
                                  operation, comm_),
                    function, "MPI_Allreduce");
      done += std::size_t(count);
    }
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace bilevel::mpi
