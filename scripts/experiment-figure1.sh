#!/usr/bin/env bash
# Reproduces Fig. 1 of the Fenchel BP paper (Zach 2021) on MNIST with the paper's MLP
# (784-256-128-64-10, ReLU, softmax cross-entropy, Adam 1e-3, batch 50):
#   left:  Glorot init, BP and Fenchel BP with several per-sample betas;
#   right: all-negative init, BP and Fenchel BP with betas around the escape window.
# Writes one JSON-lines file per run to results/figure1/ and the markdown table
# results/figure1/table.md (scripts/summarize-figure1.py). Two runs go in parallel.
#
# Usage: scripts/experiment-figure1.sh [EPOCHS]   (default 50, the paper's)
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-50}
trainer=${MNIST_MLP:-build/examples/mnist_mlp}
out=results/figure1
mkdir -p "$out"
[ -x "$trainer" ] || { echo "experiment-figure1: build first (scripts/setup.sh): $trainer missing" >&2; exit 1; }
[ -f data/mnist/train-images-idx3-ubyte ] || scripts/fetch-mnist.sh --mnist-only data

runs=(
  "glorot bp -"
  "glorot fenbp 0.01"
  "glorot fenbp 0.1"
  "glorot fenbp 1"
  "glorot fenbp 10"
  "negative bp -"
  "negative fenbp 5"
  "negative fenbp 10"
  "negative fenbp 20"
  "negative fenbp 50"
  "negative fenbp 100"
  "negative fenbp 200"
  "negative fenbp 500"
)

run_one() {
  local init=$1 method=$2 beta=$3 name extra=()
  name="$init-$method"
  if [ "$method" = fenbp ]; then name="$name-$beta"; extra=(--beta "$beta"); fi
  "$trainer" --data data/mnist --init "$init" --method "$method" "${extra[@]}" \
    --epochs "$epochs" --seed 1 --threads 1 >"$out/$name.jsonl.tmp" 2>"$out/$name.log"
  mv "$out/$name.jsonl.tmp" "$out/$name.jsonl"
  echo "experiment-figure1: $name done" >&2
}

for spec in "${runs[@]}"; do
  # shellcheck disable=SC2086
  run_one $spec &
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
done
wait
python3 scripts/summarize-figure1.py "$out" >"$out/table.md.tmp"
mv "$out/table.md.tmp" "$out/table.md"
cat "$out/table.md"
