#!/usr/bin/env bash
# Scellier & Bengio's MNIST experiment (784-500-10) with the settings of the authors' code
# (examples/ep_mnist.cpp; docs/methods.md §7): builds examples/ep_mnist if needed, trains 25
# epochs on the first 50,000 training images, and writes results/ep/scellier_bengio.jsonl (one
# JSON object per epoch) and results/ep/scellier_bengio.md (the table for README).
#
# validation_error is the code's held-out error: images 50,001-60,000, 20 free steps from
# their persistent particles. test_error: the 10,000 test images, free phase relaxed to
# convergence from 0.
#
# Usage: scripts/experiment-ep.sh [EPOCHS [SEED]]   (default 25 1)
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-25}
seed=${2:-1}
build=${BUILD_DIR:-build}
out=results/ep
[ -f data/mnist/train-images-idx3-ubyte ] || scripts/fetch-mnist.sh --mnist-only data
[ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" --target ep_mnist -j2 >/dev/null
mkdir -p "$out"
start=$(date +%s)
"$build/examples/ep_mnist" --data data/mnist --epochs "$epochs" --seed "$seed" --threads 1 \
  >"$out/scellier_bengio.jsonl.tmp" 2>"$out/scellier_bengio.log"
mv "$out/scellier_bengio.jsonl.tmp" "$out/scellier_bengio.jsonl"
echo "experiment-ep: $(( $(date +%s) - start )) s" >&2
python3 - "$out/scellier_bengio.jsonl" >"$out/scellier_bengio.md" <<'PY'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1])]
epochs = [r for r in records if not r.get("summary")]
summary = records[-1]
print("| epoch | train err. (%) | validation err., persistent, 20 steps (%) | "
      "validation err., converged from 0 (%) | test err., converged from 0 (%) | s/epoch |")
print("|---|---|---|---|---|---|")
for r in epochs:
    if r["epoch"] in (1, 5, 10, 15, 20, 25) or r is epochs[-1]:
        print(f"| {r['epoch']} | {100 * r['train_error']:.2f} | {100 * r['validation_error']:.2f} | "
              f"{100 * r['validation_error_converged']:.2f} | {100 * r['test_error']:.2f} | "
              f"{r['seconds']:.1f} |")
best = min(epochs, key=lambda r: r["validation_error"])
print(f"\nLowest validation error (persistent): {100 * best['validation_error']:.2f}% at epoch "
      f"{best['epoch']}; training time {summary['train_seconds']:.0f} s; samples left "
      f"unconverged in the last epoch's converged evaluations: {epochs[-1]['unconverged']}.")
PY
cat "$out/scellier_bengio.md"
