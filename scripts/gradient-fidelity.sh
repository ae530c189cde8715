#!/usr/bin/env bash
# Cosine similarity and relative error of every method's gradient to BP's on one fixed MNIST
# batch (64 images, the paper's MLP at Glorot init), over a sweep of beta or its equivalent.
# Writes results/gradient_fidelity.md and results/gradient_fidelity.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
tool=${GRADIENT_FIDELITY:-build/examples/gradient_fidelity}
[ -x "$tool" ] || { echo "gradient-fidelity: build first (scripts/setup.sh): $tool missing" >&2; exit 1; }
[ -f data/mnist/train-images-idx3-ubyte ] || scripts/fetch-mnist.sh --mnist-only data
mkdir -p results
"$tool" --data data/mnist --csv results/gradient_fidelity.csv >results/gradient_fidelity.md.tmp
mv results/gradient_fidelity.md.tmp results/gradient_fidelity.md
cat results/gradient_fidelity.md
