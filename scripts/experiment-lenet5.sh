#!/usr/bin/env bash
# LeNet-5 (mnist_mlp --model lenet5: conv6k5p2-pool2-conv16k5-pool2-dense120-dense84-dense10,
# ReLU, average pooling) on MNIST and Fashion-MNIST with each method's trainer defaults
# otherwise: EPOCHS epochs on the first N of the 50,000 training images, test error on the
# 10,000 test images, one thread. Writes results/lenet5/<data>-<method>.jsonl (with N < 50,000:
# results/lenet5-<N>/) and the markdown table table.md beside them (final test error, best
# validation epoch's test error, the share of inner solves that stopped at their cap without
# meeting the tolerance, seconds per epoch). A run whose file exists is not run again;
# delete the directory to start over.
#
# Usage: scripts/experiment-lenet5.sh [--epochs E] [--methods "bp fenbp ..."] [--train-samples N]
#        (defaults: 3 epochs; bp fenbp zil altmin, the methods whose LeNet-5 epoch takes
#        minutes, not hours, on this machine: see README; N 50000)
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=3 methods="bp fenbp zil altmin" samples=50000
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs) epochs=$2; shift 2 ;;
    --methods) methods=$2; shift 2 ;;
    --train-samples) samples=$2; shift 2 ;;
    *) echo "experiment-lenet5: unknown argument $1 (use --epochs E, --methods \"M ...\", --train-samples N)" >&2; exit 2 ;;
  esac
done
for count in "$epochs" "$samples"; do
  [[ "$count" =~ ^[1-9][0-9]*$ ]] || { echo "experiment-lenet5: expected a positive integer, got \"$count\"" >&2; exit 2; }
done
trainer=${MNIST_MLP:-build/examples/mnist_mlp}
out=results/lenet5
[ "$samples" -lt 50000 ] && out=results/lenet5-$samples
[ -x "$trainer" ] || { echo "experiment-lenet5: build first (scripts/setup.sh): $trainer missing" >&2; exit 1; }
# Verifies the checksums of what is there and fetches what is missing.
scripts/fetch-mnist.sh data >/dev/null
mkdir -p "$out"
for data in mnist fashion-mnist; do
  for method in $methods; do
    name="$data-$method"
    [ -s "$out/$name.jsonl" ] && continue
    "$trainer" --data "data/$data" --model lenet5 --method "$method" --epochs "$epochs" \
      --train-samples "$samples" --threads 1 --quiet >"$out/$name.jsonl.tmp"
    mv "$out/$name.jsonl.tmp" "$out/$name.jsonl"
  done
done
/usr/bin/python3 - "$out" "$methods" >"$out/table.md.tmp" <<'PY'
import json, os, sys
out, methods = sys.argv[1], sys.argv[2].split()
print("| method | data | training images | epochs | test err. (%) | test err. at best validation (%) | train err. (%) | inner solves at the cap (%) | s/epoch |")
print("|---|---|---|---|---|---|---|---|---|")
for data in ("mnist", "fashion-mnist"):
    for method in methods:
        path = os.path.join(out, f"{data}-{method}.jsonl")
        if not os.path.exists(path):  # not run (table.md of an interrupted run, made by hand)
            continue
        lines = [json.loads(l) for l in open(path)]
        epochs, summary = lines[:-1], lines[-1]
        seconds = sum(e["seconds"] for e in epochs) / len(epochs)
        shares = [e["unconverged_share"] for e in epochs if e.get("unconverged_share") is not None]
        capped = f"{100 * sum(shares) / len(shares):.1f}" if shares else "-"  # "-": no inner solver
        print(f"| {method} | {data} | {summary['train_samples']} | {len(epochs)} | {100 * summary['final_test_error']:.2f} | "
              f"{100 * summary['test_error_at_best_validation']:.2f} | "
              f"{100 * summary['final_train_error']:.2f} | {capped} | {seconds:.1f} |")
PY
mv "$out/table.md.tmp" "$out/table.md"
cat "$out/table.md"
