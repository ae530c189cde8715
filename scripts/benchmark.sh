#!/usr/bin/env bash
# Runs the benchmarks (benchmarks/training_step.cpp, benchmarks/methods.cpp,
# benchmarks/layers.cpp) and writes results/benchmark.json, results/benchmark_methods.json,
# results/benchmark_layers.json and the tables results/benchmark.md:
# BP and Fenchel BP steps over the GEMM-only and GEMM + Adam floors, every method's step over
# the BP step next to its cost model, BP and Fenchel BP at 1 and 2 threads, activation pairs per
# element, idx loading, and LeNet-5's convolutions and poolings over their own products. All ratios come from timings of the same run. Run it on an otherwise
# idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
step=${BENCH_TRAINING_STEP:-build/benchmarks/bench_training_step}
methods=${BENCH_METHODS:-build/benchmarks/bench_methods}
layers=${BENCH_LAYERS:-build/benchmarks/bench_layers}
for bench in "$step" "$methods" "$layers"; do
  [ -x "$bench" ] || { echo "benchmark: build first (scripts/setup.sh): $bench missing" >&2; exit 1; }
done
mkdir -p results
"$step" --benchmark_format=json --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true >results/benchmark.json.tmp
"$methods" --benchmark_format=json --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true >results/benchmark_methods.json.tmp
"$layers" --benchmark_format=json --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true >results/benchmark_layers.json.tmp
mv results/benchmark.json.tmp results/benchmark.json
mv results/benchmark_methods.json.tmp results/benchmark_methods.json
mv results/benchmark_layers.json.tmp results/benchmark_layers.json
python3 - results/benchmark.json results/benchmark_methods.json results/benchmark_layers.json \
  >results/benchmark.md.tmp <<'PY'
import json, sys
median = {}
for path in sys.argv[1:]:
    for r in json.load(open(path))["benchmarks"]:
        if r.get("aggregate_name") == "median":
            median[r["run_name"]] = r
def time(name):
    return median[name]["real_time"]

print("Training step of 784-256-128-64-10 (float, one thread) over its floor:\n")
print("| batch | GEMM-only (us) | GEMM GFLOP/s | GEMM + Adam (us) | BP step (us) | Fenchel BP step (us) | BP / floor | Fenchel BP / floor |")
print("|---|---|---|---|---|---|---|---|")
for batch in (50, 128, 512):
    gemm, floor = time(f"gemm_only/{batch}"), time(f"gemm_adam/{batch}")
    bp, fenbp = time(f"bp_step/{batch}"), time(f"fenbp_step/{batch}")
    gflops = median[f"gemm_only/{batch}"]["GFLOP/s"]
    print(f"| {batch} | {gemm:.0f} | {gflops:.1f} | {floor:.0f} | {bp:.0f} | {fenbp:.0f} | {bp / floor:.2f} | {fenbp / floor:.2f} |")

bp = time("step/bp/50/1")
print("\nEvery method's step at batch 50 (gradient + Adam; AltMin its native step) over BP's. "
      "Cost model: inner iterations x one BP step.\n")
print("| method | step (us) | step / BP | inner iterations | step / (iterations x BP) |")
print("|---|---|---|---|---|")
for name in ("bp", "fenbp", "ep", "zil", "altmin"):
    run = median[f"step/{name}/50/1"]
    t, iterations = run["real_time"], run["inner_iterations"]
    model = f"{t / (iterations * bp):.2f}" if iterations > 0 else "-"
    print(f"| {name} | {t:.0f} | {t / bp:.2f} | {iterations:.1f} | {model} |")

print("\nThe methods with inner solvers at the trainer's default spacings, solved to the stopping "
      "rule (docs/methods.md §5.6b), from the forward pass (cold) and from the first-order start "
      "(warm); * marks the trainer's default start. Step over BP's step, and inner iterations "
      "(sweeps or steps until the last sample of the batch converged).\n")
print("| method | spacing | cold: step / BP | cold: iterations | warm: step / BP | warm: iterations |")
print("|---|---|---|---|---|---|")
for name, spacing, default in (("chl", "beta 0.1", "cold"), ("pcn", "s 1 (sigmoid)", "cold"),
                               ("pcn_plain", "s 1 (sigmoid)", ""),
                               ("pcn_accelerated", "s 1 (sigmoid)", ""), ("mac", "mu 10", "cold"),
                               ("lpom", "lambda 10", "warm"), ("fln", "lambda 10", "warm")):
    cells = []
    for start in ("cold", "warm"):
        run = median[f"step/{name}_{start}/50/1"]
        mark = "*" if start == default else ""
        cells += [f"{run['real_time'] / bp:.1f}{mark}", f"{run['inner_iterations']:.0f}"]
    label = {"pcn": "pcn, Anderson (5)", "pcn_plain": "pcn, plain",
             "pcn_accelerated": "pcn, momentum"}.get(name, name)
    print(f"| {label} | {spacing} | " + " | ".join(cells) + " |")

print("\nThreads (OpenMP: Eigen's products, our elementwise passes and Adam), BP and Fenchel BP steps:\n")
print("| step | batch | 1 thread (us) | 2 threads (us) | speedup |")
print("|---|---|---|---|---|")
for name, batches in (("bp", (50, 128, 512)), ("fenbp", (50, 128, 512))):
    for batch in batches:
        one, two = time(f"step/{name}/{batch}/1"), time(f"step/{name}/{batch}/2")
        print(f"| {name} | {batch} | {one:.0f} | {two:.0f} | {one / two:.2f} |")

print("\nActivation pairs on a 256 x 50 batch (ns per element):\n")
print("| pair | f | Fenchel BP signal |")
print("|---|---|---|")
for pair in ("relu", "sigmoid", "tanh", "softmax"):
    f, signal = median[f"pair_elementwise/{pair}_f"], median[f"pair_elementwise/{pair}_signal"]
    print(f"| {pair} | {f['real_time'] / f['elements']:.3f} | {signal['real_time'] / signal['elements']:.3f} |")

idx = median["idx_loading"]
print(f"\nidx loading (10,000 28x28 images, plain file in the page cache): "
      f"{idx['bytes_per_second'] / 1e9:.2f} GB/s.")

print("\nLeNet-5's image maps at batch 50 (float, one thread): the map against its matrix products "
      "alone (per image, on preallocated patches); the difference is im2col's gather or scatter:\n")
print("| map | time (us) | products (us) | map / products | GFLOP/s |")
print("|---|---|---|---|---|")
for layer in ("conv1", "conv2"):
    for part in ("forward", "transpose", "gradient"):
        run = median[f"conv2d_map/{layer}_{part}"]
        products = time(f"conv2d_products/{layer}_{part}")
        print(f"| {layer} {part} | {run['real_time'] / 1e3:.0f} | {products / 1e3:.0f} | "
              f"{run['real_time'] / products:.1f} | {run['GFLOP/s']:.1f} |")
for name in ("pool1", "pool1_transpose", "pool2", "pool2_transpose"):
    run = median[f"avg_pool_map/{name}"]
    print(f"| {name.replace('_', ' ')} | {run['real_time'] / 1e3:.0f} | - | - | - |")
PY
mv results/benchmark.md.tmp results/benchmark.md
cat results/benchmark.md
