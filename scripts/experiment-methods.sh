#!/usr/bin/env bash
# Every method with its trainer defaults (each paper's architecture, batch and optimizer) on
# MNIST: 2 epochs on the first 10,000 training images, test error on the 10,000 test images.
# Writes results/methods/<method>.jsonl and the markdown table results/methods/table.md.
#
# Usage: scripts/experiment-methods.sh [EPOCHS [TRAIN_SAMPLES]]   (default 2 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-2}
samples=${2:-10000}
trainer=${MNIST_MLP:-build/examples/mnist_mlp}
out=results/methods
mkdir -p "$out"
[ -x "$trainer" ] || { echo "experiment-methods: build first (scripts/setup.sh): $trainer missing" >&2; exit 1; }
[ -f data/mnist/train-images-idx3-ubyte ] || scripts/fetch-mnist.sh --mnist-only data

run_one() {
  "$trainer" --data data/mnist --method "$1" --epochs "$epochs" --train-samples "$samples" \
    --seed 1 --threads 1 >"$out/$1.jsonl.tmp" 2>"$out/$1.log"
  mv "$out/$1.jsonl.tmp" "$out/$1.jsonl"
  echo "experiment-methods: $1 done" >&2
}

for method in bp fenbp chl ep pcn zil mac lpom fln altmin; do
  run_one "$method" &
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
done
wait
python3 - "$out" >"$out/table.md.tmp" <<'PY'
import json, pathlib, sys
directory = pathlib.Path(sys.argv[1])
print("| method | layers | activation | batch | optimizer | step | test err. (%) | train err. (%) | s/epoch | mean inner residual |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name in ["bp", "fenbp", "chl", "ep", "pcn", "zil", "mac", "lpom", "fln", "altmin"]:
    path = directory / f"{name}.jsonl"
    if not path.exists():
        continue
    records = [json.loads(line) for line in path.read_text().splitlines()]
    epochs = [r for r in records if not r.get("summary")]
    s = records[-1]
    residuals = [r["inner_residual"] for r in epochs if r.get("inner_residual") is not None]
    residual = f"{sum(residuals) / len(residuals):.2g}" if residuals else "-"
    seconds = sum(r["seconds"] for r in epochs) / len(epochs)
    print(f"| {name} | {s['layers']} | {s['activation']} | {s['batch']} | {s['optimizer']} {s['lr']:g} "
          f"| {s['step_mode']} | {100 * s['final_test_error']:.2f} | {100 * s['final_train_error']:.2f} "
          f"| {seconds:.1f} | {residual} |")
PY
mv "$out/table.md.tmp" "$out/table.md"
cat "$out/table.md"
