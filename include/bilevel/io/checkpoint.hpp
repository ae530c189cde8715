#pragma once
/// \file
/// Checkpoints: a program and any other checkpointable components (optimizer, method,
/// training_progress, your own) in one versioned binary file, written atomically.
///
///   save_checkpoint("run.ckpt", net, optimizer, method, trainer.progress());
///   load_checkpoint("run.ckpt", net, optimizer, method, trainer.progress());
///
/// Loading is all or nothing: the file's magic, version, size and CRC-32 are checked first, then
/// every component is restored into a copy, and only when all of them have been read does the
/// result replace the caller's objects. A truncated, corrupted or mismatching file (another
/// architecture, activation, scalar type, optimizer or method) gives a data_error naming the
/// file and what differs, and leaves everything untouched.
///
/// File layout, version 1 (integers little-endian, see core/state_stream.hpp):
///   8 bytes "BLVLCKPT" | u32 version | u64 payload size | payload | u32 CRC-32 of the payload
/// payload: u64 number of components, then per component a section "component" holding what
/// its save_state wrote (each begins with its own name, e.g. "program", "adam", "bp").

#include <zlib.h>

#include <algorithm>
#include <array>
#include <concepts>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/state_stream.hpp"
#include "file.hpp"

namespace bilevel {

/// A component whose state can be saved and restored (see core/state_stream.hpp).
template <class T>
concept Checkpointable = std::copy_constructible<T> && std::is_move_assignable_v<T> &&
                         requires(const T& saved, T& loaded, state_writer& out, state_reader& in) {
                           saved.save_state(out);
                           loaded.load_state(in);
                         };

inline constexpr std::array<std::uint8_t, 8> checkpoint_magic = {'B', 'L', 'V', 'L',
                                                                 'C', 'K', 'P', 'T'};
inline constexpr std::uint32_t checkpoint_version = 1;
/// Bytes before the payload: magic, version, payload size.
inline constexpr std::size_t checkpoint_header_size = checkpoint_magic.size() + 4 + 8;

namespace detail {

inline std::uint32_t crc32_of(std::span<const std::uint8_t> bytes) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  constexpr std::size_t chunk = std::size_t{1} << 30;  // zlib takes 32-bit lengths
  for (std::size_t begin = 0; begin < bytes.size(); begin += chunk) {
    const std::size_t length = std::min(chunk, bytes.size() - begin);
    crc = ::crc32(crc, bytes.data() + begin, static_cast<uInt>(length));
  }
  return static_cast<std::uint32_t>(crc);
}

/// A checkpoint file around `payload`: magic, version, payload size, payload, CRC-32.
inline std::vector<std::uint8_t> frame_checkpoint(std::span<const std::uint8_t> payload) {
  state_writer file;
  file.write_bytes(checkpoint_magic);
  file.write_u32(checkpoint_version);
  file.write_u64(payload.size());
  file.write_bytes(payload);
  file.write_u32(crc32_of(payload));
  return file.take_bytes();
}

}  // namespace detail

/// The bytes of a checkpoint of `components`, in the order given.
template <Checkpointable... Components>
std::vector<std::uint8_t> checkpoint_bytes(const Components&... components) {
  state_writer payload;
  payload.write_u64(sizeof...(Components));
  (payload.write_section("component", [&](state_writer& out) { components.save_state(out); }),
   ...);
  return detail::frame_checkpoint(payload.bytes());
}

/// Restores `components` from checkpoint bytes, all or nothing. `context` starts every error
/// message (load_checkpoint passes "load_checkpoint: <path>").
template <Checkpointable... Components>
void restore_checkpoint(std::span<const std::uint8_t> bytes, const std::string& context,
                        Components&... components) {
  constexpr std::size_t magic_size = checkpoint_magic.size();
  if (bytes.size() < magic_size ||
      !std::equal(checkpoint_magic.begin(), checkpoint_magic.end(), bytes.begin()))
    throw data_error(context + ": not a bilevel checkpoint (no BLVLCKPT magic)");
  state_reader after_magic(bytes.subspan(magic_size), context);
  const std::uint32_t version = after_magic.read_u32("version");
  if (version != checkpoint_version)
    after_magic.fail("version", checkpoint_version,
                     detail::concat(version, version > checkpoint_version
                                                 ? " (written by a newer bilevel)"
                                                 : ""));
  const std::uint64_t size = after_magic.read_u64("payload size");
  constexpr std::size_t header_size = checkpoint_header_size;
  if (bytes.size() - header_size < 4 || size != bytes.size() - header_size - 4)
    throw data_error(detail::concat(context, ": the header promises a ", size,
                                    "-byte payload, the file has room for ",
                                    bytes.size() < header_size + 4
                                        ? std::uint64_t{0}
                                        : std::uint64_t(bytes.size() - header_size - 4),
                                    " (truncated or extended)"));
  const auto payload = bytes.subspan(header_size, std::size_t(size));
  state_reader trailer(bytes.subspan(header_size + std::size_t(size)), context);
  const std::uint32_t stored_crc = trailer.read_u32("checksum");
  if (stored_crc != detail::crc32_of(payload))
    throw data_error(context + ": checksum mismatch: the file is corrupted");

  state_reader in(payload, context);
  in.read_index("number of components", Index(sizeof...(Components)),
                Index(sizeof...(Components)));
  std::tuple<Components...> staged(components...);
  std::apply(
      [&](auto&... copies) {
        ((
             [&] {
               state_reader section = in.read_section("component");
               copies.load_state(section);
               section.finish();
             }()),
         ...);
      },
      staged);
  in.finish();
  // Copied, not moved: buffers of the same size keep their addresses, so that views of them
  // (the Python module's parameters array) stay valid.
  std::apply([&](const auto&... copies) { ((components = copies), ...); }, staged);
}

/// Writes a checkpoint of `components` to `path` atomically (io/file.hpp).
template <Checkpointable... Components>
void save_checkpoint(const std::filesystem::path& path, const Components&... components) {
  write_file_atomically(path, checkpoint_bytes(components...), "save_checkpoint");
}

/// Restores `components` (the same kinds, in the same order as saved) from `path`, all or
/// nothing; throws data_error naming the file and the problem.
template <Checkpointable... Components>
void load_checkpoint(const std::filesystem::path& path, Components&... components) {
  const std::vector<std::uint8_t> bytes = read_file(path, "load_checkpoint");
  restore_checkpoint(bytes, "load_checkpoint: " + path.string(), components...);
}

}  // namespace bilevel
