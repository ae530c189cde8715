#!/usr/bin/env bash
# Runs the training-step benchmark (benchmarks/training_step.cpp) and writes
# results/benchmark.json and the ratio table results/benchmark.md: each step's time over the
# GEMM-only floor and over the GEMM + Adam floor, measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH_TRAINING_STEP:-build/benchmarks/bench_training_step}
[ -x "$bench" ] || { echo "benchmark: build first (scripts/setup.sh): $bench missing" >&2; exit 1; }
mkdir -p results
"$bench" --benchmark_format=json --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true >results/benchmark.json.tmp
mv results/benchmark.json.tmp results/benchmark.json
python3 - results/benchmark.json >results/benchmark.md.tmp <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))["benchmarks"]
median = {r["run_name"]: r for r in runs if r.get("aggregate_name") == "median"}
def time(name, batch):
    return median[f"{name}/{batch}"]["real_time"]
print("| batch | GEMM-only (us) | GEMM GFLOP/s | GEMM + Adam (us) | BP step (us) | Fenchel BP step (us) | BP / floor | Fenchel BP / floor |")
print("|---|---|---|---|---|---|---|---|")
for batch in (50, 128, 512):
    gemm, floor = time("gemm_only", batch), time("gemm_adam", batch)
    bp, fenbp = time("bp_step", batch), time("fenbp_step", batch)
    gflops = median[f"gemm_only/{batch}"]["GFLOP/s"]
    print(f"| {batch} | {gemm:.0f} | {gflops:.1f} | {floor:.0f} | {bp:.0f} | {fenbp:.0f} | {bp / floor:.2f} | {fenbp / floor:.2f} |")
PY
mv results/benchmark.md.tmp results/benchmark.md
cat results/benchmark.md
