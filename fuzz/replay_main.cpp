// A driver for the fuzz targets that needs no libFuzzer, so every compiler and the sanitizer
// build of the test suite run them:
//   <target> --write-seeds DIR         writes the target's seeds (libFuzzer's starting corpus)
//   <target> --mutate N [--seed S]     runs the seeds and N random mutations of them
//   <target> FILE...                   runs each file (to reproduce a libFuzzer finding)
// The mutations are deterministic given S. They favour what breaks binary readers: flipped
// bits, extreme integers written over length fields, truncation, spliced and repeated chunks.

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "bilevel/core/random.hpp"
#include "fuzz_target.hpp"

namespace {

using bytes = std::vector<std::uint8_t>;

void mutate(bytes& input, const std::vector<bytes>& seeds, bilevel::random_source& random) {
  const auto pick = [&](std::size_t n) { return std::size_t(random.below(std::uint64_t(n))); };
  const int operations = 1 + int(random.below(4));
  for (int op = 0; op < operations; ++op) {
    switch (random.below(input.empty() ? 1 : 7)) {
      case 0: {  // insert random bytes
        bytes extra(1 + pick(16));
        for (auto& byte : extra) byte = std::uint8_t(random.below(256));
        input.insert(input.begin() + std::ptrdiff_t(pick(input.size() + 1)), extra.begin(),
                     extra.end());
        break;
      }
      case 1:  // flip one bit
        input[pick(input.size())] ^= std::uint8_t(1u << random.below(8));
        break;
      case 2:  // overwrite a byte
        input[pick(input.size())] = std::uint8_t(random.below(256));
        break;
      case 3: {  // an extreme 64-bit little-endian integer over 8 bytes (length fields)
        static constexpr std::uint64_t extremes[] = {0, 1, 0x7f, 0xff, 0xffffffffull,
                                                     0x7fffffffffffffffull, ~0ull,
                                                     0x8000000000000000ull, 1ull << 32};
        const std::uint64_t value = extremes[pick(std::size(extremes))];
        const std::size_t at = pick(input.size());
        for (std::size_t b = 0; b < 8 && at + b < input.size(); ++b)
          input[at + b] = std::uint8_t(value >> (8 * b));
        break;
      }
      case 4:  // truncate
        input.resize(pick(input.size()));
        break;
      case 5: {  // repeat a chunk
        const std::size_t begin = pick(input.size()), length = 1 + pick(input.size() - begin);
        const bytes chunk(input.begin() + std::ptrdiff_t(begin),
                          input.begin() + std::ptrdiff_t(begin + length));
        input.insert(input.begin() + std::ptrdiff_t(pick(input.size() + 1)), chunk.begin(),
                     chunk.end());
        break;
      }
      default: {  // splice: the tail of another seed
        const bytes& other = seeds[pick(seeds.size())];
        const std::size_t keep = pick(input.size() + 1), from = pick(other.size() + 1);
        input.resize(keep);
        input.insert(input.end(), other.begin() + std::ptrdiff_t(from), other.end());
        break;
      }
    }
  }
}

bytes read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int usage() {
  std::cerr << "usage: fuzz target --write-seeds DIR | --mutate N [--seed S] | FILE...\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) return usage();
  const std::vector<bytes> seeds = fuzz_seeds();
  if (args[0] == "--write-seeds") {
    if (args.size() != 2) return usage();
    std::filesystem::create_directories(args[1]);
    for (std::size_t i = 0; i < seeds.size(); ++i) {
      std::ofstream out(std::filesystem::path(args[1]) / ("seed-" + std::to_string(i)),
                        std::ios::binary);
      out.write(reinterpret_cast<const char*>(seeds[i].data()), std::streamsize(seeds[i].size()));
      if (!out) return 1;
    }
    return 0;
  }
  if (args[0] == "--mutate") {
    if (args.size() != 2 && !(args.size() == 4 && args[2] == "--seed")) return usage();
    const std::uint64_t runs = std::stoull(args[1]);
    bilevel::random_source random(args.size() == 4 ? std::stoull(args[3]) : 1);
    for (const bytes& seed : seeds) LLVMFuzzerTestOneInput(seed.data(), seed.size());
    for (std::uint64_t run = 0; run < runs; ++run) {
      bytes input = seeds[std::size_t(random.below(seeds.size()))];
      mutate(input, seeds, random);
      LLVMFuzzerTestOneInput(input.data(), input.size());
    }
    std::cout << seeds.size() << " seeds and " << runs << " mutations ran without a finding\n";
    return 0;
  }
  for (const std::string& file : args) {
    const bytes input = read_bytes(file);
    LLVMFuzzerTestOneInput(input.data(), input.size());
  }
  return 0;
}
