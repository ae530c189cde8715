#!/usr/bin/env bash
# The trainer on Fashion-MNIST (Debian's dataset-fashion-mnist, checked by scripts/fetch-mnist.sh):
# sets up and builds, puts the data in data/fashion-mnist and trains the Fenchel BP paper's MLP.
# Extra arguments go to the trainer, e.g. scripts/train-fashion.sh --method bp --epochs 20
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-mnist.sh data
build/examples/mnist_mlp --data data/fashion-mnist --method fenbp --epochs 10 "$@"
