#!/usr/bin/env bash
# Builds the libFuzzer targets (idx reader, checkpoint reader) with Clang, AddressSanitizer and
# UndefinedBehaviorSanitizer in build-fuzz/, and fuzzes each for SECONDS (default 10) from its
# seeds. Usage: scripts/fuzz.sh [SECONDS]. Installs Clang 14 from Debian if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"

packages=(clang-14 libclang-rt-14-dev cmake make libeigen3-dev zlib1g-dev)
scripts/install-packages.sh "${packages[@]}"

cmake --preset fuzz -DBILEVEL_FUZZ_SECONDS="$seconds" >/dev/null
cmake --build build-fuzz -j"$(nproc)"
# One target at a time: each libFuzzer run uses a core for its whole time budget.
log=build-fuzz/fuzz.log
status=0
ctest --test-dir build-fuzz --output-on-failure -V -j1 >"$log" 2>&1 || status=$?
grep -E "stat::number_of_executed_units|without a finding|tests passed|tests failed" "$log" || true
[ "$status" -eq 0 ] || echo "fuzz: a target found a problem; see $log" >&2
exit "$status"
