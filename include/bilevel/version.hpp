#pragma once
/// \file
/// The library's version, the same as the CMake package's (project(bilevel VERSION ...), checked
/// by tests/program.cpp) and the release's git tag (v<version>).

#include <string_view>

namespace bilevel {

inline constexpr int version_major = 0;
inline constexpr int version_minor = 1;
inline constexpr int version_patch = 0;
inline constexpr std::string_view version = "0.1.0";

}  // namespace bilevel
