#pragma once
// The trainer's output files (--save, --csv, --export), checked before any training: an output that is
// the same file as an input or as the other output would destroy data, and one that cannot be
// written would fail only after the first epoch.

#include <unistd.h>

#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "bilevel/core/error.hpp"
#include "bilevel/io/idx.hpp"
#include "options.hpp"

namespace mnist_mlp {

namespace detail {

namespace fs = std::filesystem;

/// Whether `a` and `b` name the same file: the same device and inode where both exist (hard
/// links, symbolic links, other spellings), the same absolute path after resolving what exists
/// of it otherwise.
inline bool same_file(const fs::path& a, const fs::path& b) {
  std::error_code error;
  if (fs::exists(a, error) && fs::exists(b, error)) {
    const bool same = fs::equivalent(a, b, error);
    return !error && same;
  }
  const fs::path resolved_a = fs::weakly_canonical(fs::absolute(a, error), error);
  const fs::path resolved_b = fs::weakly_canonical(fs::absolute(b, error), error);
  return resolved_a == resolved_b;
}

/// Throws data_error naming `flag` unless `path` can be written: its directory exists and
/// lets us create files, and the path is not a directory.
inline void require_writable(const std::string& flag, const fs::path& path) {
  std::error_code error;
  if (fs::is_directory(path, error))
    throw bilevel::data_error(flag + " " + path.string() + ": is a directory");
  const fs::path directory = path.has_parent_path() ? path.parent_path() : fs::path(".");
  const auto status = fs::status(directory, error);
  if (error)
    throw bilevel::data_error(flag + " " + path.string() + ": directory " + directory.string() +
                                ": " + error.message());
  if (!fs::is_directory(status))
    throw bilevel::data_error(flag + " " + path.string() + ": " + directory.string() +
                                " is not a directory");
  if (::access(directory.c_str(), W_OK | X_OK) != 0)
    throw bilevel::data_error(flag + " " + path.string() + ": directory " + directory.string() +
                                ": " + std::generic_category().message(errno));
}

/// Throws data_error naming `flag` unless `directory` exists and lets us create files.
inline void require_writable_directory(const std::string& flag, const fs::path& directory) {
  std::error_code error;
  const auto status = fs::status(directory, error);
  if (error)
    throw bilevel::data_error(flag + " " + directory.string() + ": " + error.message());
  if (!fs::is_directory(status))
    throw bilevel::data_error(flag + " " + directory.string() + ": not a directory");
  if (::access(directory.c_str(), W_OK | X_OK) != 0)
    throw bilevel::data_error(flag + " " + directory.string() + ": " +
                              std::generic_category().message(errno));
}

}  // namespace detail

/// The files the trainer may read: the four idx files under --data (plain or .gz) and the
/// checkpoint of --resume.
inline std::vector<std::pair<std::string, std::filesystem::path>> trainer_inputs(
    const options& opts) {
  std::vector<std::pair<std::string, std::filesystem::path>> inputs;
  for (const std::string_view name : bilevel::mnist_file_names) {
    const std::filesystem::path plain = std::filesystem::path(opts.data) / name;
    inputs.emplace_back("--data", plain);
    inputs.emplace_back("--data", std::filesystem::path(plain).concat(".gz"));
  }
  if (!opts.resume.empty()) inputs.emplace_back("--resume", opts.resume);
  return inputs;
}

/// Throws data_error unless every output (--save, --csv) can be written, config_error (bad
/// flags) if one is the same file as an input or as the other output. --save may name the --resume checkpoint: a resumed
/// run writing over its own checkpoint is the usual case.
inline void check_outputs(const options& opts) {
  std::vector<std::pair<std::string, std::filesystem::path>> outputs;
  if (!opts.save.empty()) outputs.emplace_back("--save", opts.save);
  if (!opts.csv.empty()) outputs.emplace_back("--csv", opts.csv);
  for (const auto& [flag, path] : outputs) detail::require_writable(flag, path);
  if (!opts.export_dir.empty()) detail::require_writable_directory("--export", opts.export_dir);
  if (outputs.size() == 2 && detail::same_file(outputs[0].second, outputs[1].second))
    throw bilevel::config_error("--save and --csv name the same file, " + opts.save +
                                ": the metrics would overwrite the checkpoint");
  for (const auto& [output_flag, output] : outputs)
    for (const auto& [input_flag, input] : trainer_inputs(opts)) {
      if (output_flag == "--save" && input_flag == "--resume") continue;
      if (detail::same_file(output, input))
        throw bilevel::config_error(output_flag + " " + output.string() + " is the " +
                                    input_flag + " file " + input.string() +
                                    ": writing it would destroy an input");
    }
}

}  // namespace mnist_mlp
