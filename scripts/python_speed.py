#!/usr/bin/env python3
"""The cost of training from Python: one MNIST epoch (50,000 images, batch 50, one thread) of
the C++ trainer against the same epoch as bilevel.train and as a hand-written Python loop of
method.gradient + opt.step; then a training step with tanh written in Python (the tests' pair,
no inverse or proximal map given) against the built-in tanh; measured in one run (README "From
Python"). Needs the module (scripts/setup.sh), the trainer in build/ and data/mnist
(scripts/fetch-mnist.sh).

    python3 scripts/python_speed.py [--methods fenbp,pcn] [--repeats 3] [--pairs-only]
"""
import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

import bilevel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python" / "tests"))
from test_pairs import tanh_pair  # noqa: E402 (the tests' Python tanh)

SIZES = [784, 256, 128, 64, 10]
SETTINGS = {"fenbp": ["--beta", "0.01"], "pcn": ["--beta", "1"]}
ACTIVATION = {"pcn": "sigmoid"}  # the trainer's PCN default; ReLU chatters at its kinks


def trainer_seconds(trainer, data, method):
    """The trainer's own training time of one epoch (its JSON line's `seconds`)."""
    line = subprocess.run(
        [trainer, "--data", data, "--method", method, "--layers", ",".join(map(str, SIZES)),
         "--activation", ACTIVATION.get(method, "relu"), "--optimizer", "adam", "--lr", "0.001",
         "--batch", "50", "--epochs", "1", "--threads", "1", "--quiet",
         *SETTINGS.get(method, [])],
        check=True, capture_output=True, text=True).stdout.splitlines()[0]  # then a summary
    return json.loads(line)["seconds"]


def module_setup(method):
    net = bilevel.mlp(SIZES, activation=ACTIVATION.get(method, "relu"), seed=1)
    settings = {"beta": float(SETTINGS[method][1])} if method in SETTINGS else {}
    return net, bilevel.method(method, **settings), bilevel.optimizer("adam", net, lr=1e-3)


def run_loop_seconds(images, labels, method):
    net, m, opt = module_setup(method)
    return bilevel.train(net, m, opt, images, labels, epochs=1, batch=50, seed=2)[0]["seconds"]


def python_loop_seconds(images, labels, method):
    """As a user writes it: a fresh permutation, fancy-indexed batches."""
    net, m, opt = module_setup(method)
    order = np.random.default_rng(2).permutation(len(images))
    bilevel.flush_denormals(True)  # as the trainer and bilevel.train do
    start = time.perf_counter()
    for begin in range(0, len(images), 50):
        batch = order[begin:begin + 50]
        g, _ = m.gradient(net, images[batch], labels[batch])
        opt.step(net, g)
    seconds = time.perf_counter() - start
    bilevel.flush_denormals(False)
    return seconds


def step_seconds(method, net, x, y, repeats):
    method.gradient(net, x, y)
    start = time.perf_counter()
    for _ in range(repeats):
        method.gradient(net, x, y)
    return (time.perf_counter() - start) / repeats


def pair_table(images, labels, methods, repeats):
    print("\n| method | built-in tanh step (ms) | Python tanh step (ms) | Python / built-in |")
    print("|---|---|---|---|")
    x, y = images[:50], labels[:50]
    for method in methods:
        costs = [min(step_seconds(bilevel.method(method),
                                  bilevel.mlp(SIZES, activation=hidden, seed=1), x, y, 5)
                     for _ in range(repeats)) for hidden in ("tanh", tanh_pair())]
        print(f"| {method} | {1e3 * costs[0]:.2f} | {1e3 * costs[1]:.2f} "
              f"| {costs[1] / costs[0]:.2f}x |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="fenbp,pcn")
    parser.add_argument("--repeats", type=int, default=3, help="the fastest of this many runs")
    parser.add_argument("--trainer", default="build/examples/mnist_mlp")
    parser.add_argument("--data", default="data/mnist")
    parser.add_argument("--pairs-only", action="store_true", help="only the Python pair's table")
    args = parser.parse_args()

    bilevel.set_threads(1)
    images, labels = bilevel.load_mnist(args.data, "train")
    images, labels = images[:50000], labels[:50000]  # the trainer's training split
    if args.pairs_only:
        pair_table(images, labels, ["bp", "fenbp", "pcn", "lpom"], args.repeats)
        return
    print("| method | C++ trainer epoch (s) | bilevel.train (s) | Python loop (s) "
          "| Python loop / trainer |")
    print("|---|---|---|---|---|")
    for method in args.methods.split(","):
        best = [min(f() for _ in range(args.repeats)) for f in (
            lambda: trainer_seconds(args.trainer, args.data, method),
            lambda: run_loop_seconds(images, labels, method),
            lambda: python_loop_seconds(images, labels, method))]
        print(f"| {method} | {best[0]:.2f} | {best[1]:.2f} | {best[2]:.2f} "
              f"| {best[2] / best[0]:.2f}x |", flush=True)
    pair_table(images, labels, ["bp", "fenbp", "pcn", "lpom"], args.repeats)


if __name__ == "__main__":
    main()
