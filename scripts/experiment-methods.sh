#!/usr/bin/env bash
# Every method with its trainer defaults (each paper's architecture, batch and optimizer; every
# inner solver at its converged defaults) on MNIST: EPOCHS epochs on the first TRAIN_SAMPLES
# training images, test error on the 10,000 test images, over several seeds (one seed cannot
# rank methods). Writes results/methods/<method>-seed<S>.jsonl and the markdown table
# results/methods/table.md: mean +- sd over the seeds, the share of samples whose inner solve
# stopped at its cap (unconverged) and seconds per epoch. A run whose file exists is not run
# again, so an interrupted experiment resumes; delete results/methods to start over.
#
# Usage: scripts/experiment-methods.sh [--seeds N] [--epochs E] [--samples M] [--jobs J]
#        (defaults: 5 seeds, 2 epochs, 10000 images, 2 runs at a time)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=5 epochs=2 samples=10000 jobs=2
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    *) echo "experiment-methods: unknown argument $1 (use --seeds N, --epochs E, --samples M, --jobs J)" >&2; exit 2 ;;
  esac
done
for value in "$seeds" "$epochs" "$samples" "$jobs"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || { echo "experiment-methods: expected a positive integer, got \"$value\"" >&2; exit 2; }
done
trainer=${MNIST_MLP:-build/examples/mnist_mlp}
out=results/methods
methods="bp fenbp chl ep pcn zil mac lpom fln altmin"
mkdir -p "$out"
[ -x "$trainer" ] || { echo "experiment-methods: build first (scripts/setup.sh): $trainer missing" >&2; exit 1; }
[ -f data/mnist/train-images-idx3-ubyte ] || scripts/fetch-mnist.sh --mnist-only data

run_one() {
  local method=$1 seed=$2 name="$1-seed$2"
  [ -s "$out/$name.jsonl" ] && return 0
  nice "$trainer" --data data/mnist --method "$method" --epochs "$epochs" --train-samples "$samples" \
    --seed "$seed" --threads 1 >"$out/$name.jsonl.tmp" 2>"$out/$name.log"
  mv "$out/$name.jsonl.tmp" "$out/$name.jsonl"
  rm -f "$out/$name.log"
  echo "experiment-methods: $name done" >&2
}

for seed in $(seq 1 "$seeds"); do
  for method in $methods; do
    run_one "$method" "$seed" &
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  done
done
wait
python3 - "$out" $methods >"$out/table.md.tmp" <<'PY'
import json, pathlib, statistics, sys
directory = pathlib.Path(sys.argv[1])

def spread(values, scale=100, digits=2):
    values = [scale * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

print("| method | layers | activation | batch | optimizer | step | seeds | test err. (%) | train err. (%) "
      "| unconverged (%) | s/epoch |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name in sys.argv[2:]:
    runs = []
    for path in sorted(directory.glob(f"{name}-seed*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        epochs = [r for r in records if not r.get("summary")]
        if epochs and records[-1].get("summary"):
            runs.append((epochs, records[-1]))
    if not runs:
        continue
    s = runs[0][1]
    unconverged = [statistics.mean(r.get("unconverged_share") or 0 for r in epochs) for epochs, _ in runs]
    seconds = statistics.mean(r["seconds"] for epochs, _ in runs for r in epochs)
    print(f"| {name} | {s['layers']} | {s['activation']} | {s['batch']} | {s['optimizer']} {s['lr']:g} "
          f"| {s['step_mode']} | {len(runs)} | {spread([r['final_test_error'] for _, r in runs])} "
          f"| {spread([r['final_train_error'] for _, r in runs])} "
          f"| {spread(unconverged)} | {seconds:.1f} |")
PY
mv "$out/table.md.tmp" "$out/table.md"
cat "$out/table.md"
