#!/usr/bin/env bash
# Reproduces Fig. 1 of the Fenchel BP paper (Zach 2021) on MNIST with the paper's MLP
# (784-256-128-64-10, ReLU, softmax cross-entropy, Adam 1e-3, batch 50, float, one thread per
# run), over several seeds:
#   glorot:       BP and Fenchel BP at per-sample beta 0.01, 0.1, 1, 10;
#   negative:     the paper's negative start (layer 1 -|glorot|, the rest glorot, biases 0),
#                 BP and Fenchel BP at per-sample betas around the escape window, and the
#                 paper's code beta 0.01 at batch 50 (per sample 0.0002, docs/methods.md §1);
#   all-negative: every layer -|glorot|, the same betas.
# Writes one JSON-lines file per run, results/figure1/<init>-<method>[-<beta>]-seed<S>.jsonl,
# the table results/figure1/table.md (scripts/summarize-figure1.py) and the figures
# results/figure1-<init>.png (seed 1's curves, scripts/plot.py). A run whose file exists is
# not run again, so an interrupted experiment resumes and more seeds can be added later;
# delete results/figure1 to start over.
#
# Usage: scripts/experiment-figure1.sh [--seeds N] [--epochs E] [--jobs J]
#        (defaults: 3 seeds, 50 epochs as in the paper, 2 runs at a time)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=3 epochs=50 jobs=2
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    *) echo "experiment-figure1: unknown argument $1 (use --seeds N, --epochs E, --jobs J)" >&2; exit 2 ;;
  esac
done
for value in "$seeds" "$epochs" "$jobs"; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || { echo "experiment-figure1: expected a positive integer, got \"$value\"" >&2; exit 2; }
done
trainer=${MNIST_MLP:-build/examples/mnist_mlp}
out=results/figure1
mkdir -p "$out"
[ -x "$trainer" ] || { echo "experiment-figure1: build first (scripts/setup.sh): $trainer missing" >&2; exit 1; }
[ -f data/mnist/train-images-idx3-ubyte ] || scripts/fetch-mnist.sh --mnist-only data

negative_betas="0.0002 1 5 10 20 50 100 200"
runs=("glorot bp -")
for beta in 0.01 0.1 1 10; do runs+=("glorot fenbp $beta"); done
for init in negative all-negative; do
  runs+=("$init bp -")
  for beta in $negative_betas; do runs+=("$init fenbp $beta"); done
done

run_one() {
  local init=$1 method=$2 beta=$3 seed=$4 name extra=()
  name="$init-$method"
  if [ "$method" = fenbp ]; then name="$name-$beta"; extra=(--beta "$beta"); fi
  name="$name-seed$seed"
  [ -s "$out/$name.jsonl" ] && return 0
  nice "$trainer" --data data/mnist --init "$init" --method "$method" "${extra[@]}" \
    --epochs "$epochs" --seed "$seed" --threads 1 --precision float \
    >"$out/$name.jsonl.tmp" 2>"$out/$name.log"
  mv "$out/$name.jsonl.tmp" "$out/$name.jsonl"
  rm -f "$out/$name.log"
  echo "experiment-figure1: $name done" >&2
}

for seed in $(seq 1 "$seeds"); do
  for spec in "${runs[@]}"; do
    # shellcheck disable=SC2086
    run_one $spec "$seed" &
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  done
done
wait
python3 scripts/summarize-figure1.py "$out" >"$out/table.md.tmp"
mv "$out/table.md.tmp" "$out/table.md"
cat "$out/table.md"
for init in glorot negative all-negative; do
  python3 scripts/plot.py curves "results/figure1-$init.png" "$out/$init"-*-seed1.jsonl \
    --title "Fig. 1, $init start (seed 1)"
done
