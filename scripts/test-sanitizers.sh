#!/usr/bin/env bash
# Builds the tests, the trainer they run and the fuzz replay drivers with AddressSanitizer and
# UndefinedBehaviorSanitizer (CMake preset "sanitize", in build-sanitize/) and runs them.
# At -O1 with line tables only (-g1): half the compile time of -O2 -g, with file:line in every
# sanitizer report. Assumes scripts/setup.sh ran.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --preset sanitize >/dev/null
cmake --build build-sanitize -j"$(nproc)"
ctest --preset sanitize -j"$(nproc)"
