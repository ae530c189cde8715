#!/usr/bin/env bash
# Builds the tests, the trainer they run and the fuzz replay drivers with AddressSanitizer and
# UndefinedBehaviorSanitizer (CMake preset "sanitize", in build-sanitize/) and runs them.
# At -Og with line tables only (-g1), file:line in every sanitizer report: measured on one test
# file, -Og compiles in two thirds of -O1's time (the instrumentation triples the compile time
# at -O1) and its tests run 1.2x as long; -O0 compiles in half the time, but Eigen without
# inlining runs far slower. Assumes scripts/setup.sh ran.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --preset sanitize >/dev/null
cmake --build build-sanitize -j"$(nproc)"
ctest --preset sanitize -j"$(nproc)"
