#!/usr/bin/env bash
# Builds the tests (and the trainer they run) with AddressSanitizer and
# UndefinedBehaviorSanitizer in build-sanitize/ and runs them. Assumes scripts/setup.sh ran.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBILEVEL_SANITIZE=ON \
  -DBILEVEL_NATIVE=OFF -DBILEVEL_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build-sanitize -j"$(nproc)"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-sanitize --output-on-failure -j"$(nproc)"
