#!/usr/bin/env bash
# The main job: sets up and builds (scripts/setup.sh), fetches MNIST (scripts/fetch-mnist.sh)
# and trains the Fenchel BP paper's MLP (784-256-128-64-10, ReLU, Adam 1e-3, batch 50) with
# Fenchel BP. Extra arguments go to the trainer (see build/examples/mnist_mlp --help), e.g.
#   scripts/train.sh --epochs 50 --init negative --beta 20
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch-mnist.sh --mnist-only data
build/examples/mnist_mlp --data data/mnist --method fenbp --epochs 10 "$@"
