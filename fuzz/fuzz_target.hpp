#pragma once
// What every fuzz target provides: libFuzzer's entry point, which must return normally for any
// input (a bilevel::error is the expected answer to bad bytes; a crash, a sanitizer report or
// any other exception is a finding), and valid inputs to start from.

#include <cstddef>
#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

/// Valid inputs for the target's format: libFuzzer's starting corpus, and what the replay
/// driver mutates.
std::vector<std::vector<std::uint8_t>> fuzz_seeds();
