#pragma once
/// \file
/// Whole-file reads and atomic writes. A file is written under a unique temporary name in the
/// same directory, flushed to disk (fsync), and renamed over the target: a reader, or a run that
/// is killed mid-write, sees either the old file or the complete new one, never a mix.

#include <fcntl.h>
#include <sys/stat.h>
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

/// Throws data_error "<where><reason>" unless `path` names an existing regular file (after
/// symbolic links): the operating system's reason when it cannot be looked up ("No such file or
/// directory", "Permission denied", "Too many levels of symbolic links"), "is a directory" or
/// "not a regular file (a FIFO, socket or device)", which could block a reader forever.
inline void require_regular_file(const std::filesystem::path& path, std::string_view where) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0)
    throw data_error(concat(where, errno == ENOENT ? std::string("no such file") : errno_text(errno)));
  if (S_ISDIR(info.st_mode)) throw data_error(concat(where, "is a directory"));
  if (!S_ISREG(info.st_mode))
    throw data_error(concat(where, "not a regular file (a FIFO, socket or device)"));
}

/// Longest file name most file systems take (NAME_MAX on Linux).
inline constexpr std::size_t max_file_name = 255;
/// Hex digits of the random part of a temporary file's name.
inline constexpr std::size_t temporary_digits = 16;

/// The start of write_file_atomically's temporary names for `path`: "<name>.tmp.", the name cut
/// so that the whole temporary name stays within max_file_name.
inline std::string temporary_prefix(const std::filesystem::path& path) {
  std::string name = path.filename().string();
  const std::size_t room = max_file_name - (5 + temporary_digits);  // ".tmp." + digits
  if (name.size() > room) name.resize(room);
  return name + ".tmp.";
}

/// Removes temporaries of `path` left by a writer that was killed before its rename: files in
/// the same directory named temporary_prefix(path) followed by exactly temporary_digits hex
/// digits. Best effort: a directory that cannot be listed is left alone.
inline void remove_stale_temporaries(const std::filesystem::path& path) {
  const std::string prefix = temporary_prefix(path);
  const std::filesystem::path directory = path.has_parent_path() ? path.parent_path() : ".";
  std::error_code error;
  for (std::filesystem::directory_iterator entry(directory, error), end; !error && entry != end;
       entry.increment(error)) {
    const std::string name = entry->path().filename().string();
    if (name.size() != prefix.size() + temporary_digits || !name.starts_with(prefix)) continue;
    if (name.find_first_not_of("0123456789abcdef", prefix.size()) != std::string::npos) continue;
    std::error_code ignored;
    std::filesystem::remove(entry->path(), ignored);
  }
}

}  // namespace detail

/// Writes `bytes` to `path` atomically. Throws data_error naming `function` and the path if
/// any step fails; the target is then left as it was and no temporary file remains. Temporaries
/// of the same target that a killed writer left behind are removed first.
inline void write_file_atomically(const std::filesystem::path& path,
                                  std::span<const std::uint8_t> bytes, std::string_view function) {
  using detail::concat;
  const std::string where = concat(function, ": cannot write ", path.string(), ": ");
  detail::remove_stale_temporaries(path);
  std::random_device entropy;
  char digits[detail::temporary_digits + 1];
  std::snprintf(digits, sizeof digits, "%016llx",
                static_cast<unsigned long long>((std::uint64_t{entropy()} << 32) ^ entropy()));
  const std::filesystem::path temporary =
      path.parent_path() / (detail::temporary_prefix(path) + digits);

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
/// is missing, not a regular file, or cannot be read.
inline std::vector<std::uint8_t> read_file(const std::filesystem::path& path,
                                           std::string_view function) {
  using detail::concat;
  const std::string where = concat(function, ": cannot read ", path.string(), ": ");
  detail::require_regular_file(path, where);
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
