#pragma once
// Whole-file reads and atomic writes. A file is written under a unique temporary name in the
// same directory, flushed to disk (fsync), and renamed over the target: a reader, or a run that
// is killed mid-write, sees either the old file or the complete new one, never a mix.

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "../core/error.hpp"

namespace bilevel {

namespace detail {

inline std::string errno_text(int code) {
  return code != 0 ? std::generic_category().message(code) : "unknown error";
}

/// Flushes a directory entry (the rename) to disk; best effort, as not every file system can.
inline void sync_directory(const std::filesystem::path& directory) {
  const int descriptor = ::open(directory.empty() ? "." : directory.c_str(), O_RDONLY);
  if (descriptor < 0) return;
  ::fsync(descriptor);
  ::close(descriptor);
}

/// Throws data_error "<where>no such file" (or the stat error, e.g. no permission) or
/// "<where>is a directory" unless `path` names an existing non-directory.
inline void require_existing_file(const std::filesystem::path& path, std::string_view where) {
  std::error_code status_error;
  const auto status = std::filesystem::status(path, status_error);
  if (status.type() == std::filesystem::file_type::none)  // stat failed
    throw data_error(concat(where, status_error.message()));
  if (!std::filesystem::exists(status)) throw data_error(concat(where, "no such file"));
  if (std::filesystem::is_directory(status)) throw data_error(concat(where, "is a directory"));
}

}  // namespace detail

/// Writes `bytes` to `path` atomically. Throws data_error naming `function` and the path if
/// any step fails; the target is then left as it was and no temporary file remains.
inline void write_file_atomically(const std::filesystem::path& path,
                                  std::span<const std::uint8_t> bytes, std::string_view function) {
  using detail::concat;
  const std::string where = concat(function, ": cannot write ", path.string(), ": ");
  std::random_device entropy;
  std::filesystem::path temporary = path;
  temporary += concat(".tmp.", (std::uint64_t{entropy()} << 32) ^ entropy());

  std::FILE* file = std::fopen(temporary.c_str(), "wb");
  if (!file) throw data_error(concat(where, detail::errno_text(errno)));
  // fwrite may not be given a null pointer, which an empty span can hold.
  bool written = (bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), file) == bytes.size()) &&
                 std::fflush(file) == 0 && ::fsync(::fileno(file)) == 0;
  int code = errno;
  if (std::fclose(file) != 0 && written) {
    written = false;
    code = errno;
  }
  std::error_code ignored;
  if (!written) {
    std::filesystem::remove(temporary, ignored);
    throw data_error(concat(where, detail::errno_text(code)));
  }
  std::error_code rename_error;
  std::filesystem::rename(temporary, path, rename_error);
  if (rename_error) {
    std::filesystem::remove(temporary, ignored);
    throw data_error(concat(where, rename_error.message()));
  }
  detail::sync_directory(path.parent_path());
}

/// The whole content of a regular file. Throws data_error naming `function` and the path if it
/// is missing, a directory, or cannot be read.
inline std::vector<std::uint8_t> read_file(const std::filesystem::path& path,
                                           std::string_view function) {
  using detail::concat;
  const std::string where = concat(function, ": cannot read ", path.string(), ": ");
  detail::require_existing_file(path, where);
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) throw data_error(concat(where, detail::errno_text(errno)));
  std::vector<std::uint8_t> bytes;
  std::uint8_t buffer[1 << 16];
  std::size_t got = 0;
  while ((got = std::fread(buffer, 1, sizeof buffer, file)) > 0)
    bytes.insert(bytes.end(), buffer, buffer + got);
  const bool failed = std::ferror(file) != 0;
  const int code = errno;
  std::fclose(file);
  if (failed) throw data_error(concat(where, detail::errno_text(code)));
  return bytes;
}

}  // namespace bilevel
