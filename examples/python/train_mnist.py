#!/usr/bin/env python3
"""Trains the paper's MNIST MLP with any bilevel method from Python, two ways: the library's
run loop (bilevel.train), then a few steps of a hand-written loop (method.gradient +
opt.step), and prints the test error.

    python3 examples/python/train_mnist.py --method pcn   # data/mnist: scripts/fetch-mnist.sh
    python3 examples/python/train_mnist.py --synthetic    # no data needed
"""
import argparse
import time

import numpy as np

import bilevel


def synthetic(samples, seed):
    """Noisy copies of ten random 28 x 28 prototypes, as MNIST-shaped arrays."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(0).random((10, 784)).astype(np.float32)
    labels = rng.integers(0, 10, samples).astype(np.uint8)
    noise = 0.3 * rng.standard_normal((samples, 784)).astype(np.float32)
    return np.clip(prototypes[labels] + noise, 0, 1), labels


def error(net, method, images, labels):
    return float(np.mean(method.predict(net, images).argmax(axis=1) != labels))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/mnist", help="directory of the MNIST idx files")
    parser.add_argument("--synthetic", action="store_true", help="train on generated digits")
    parser.add_argument("--method", default="fenbp", choices=sorted(bilevel.methods()))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()

    if args.synthetic:
        (images, labels), (test_images, test_labels) = synthetic(2000, 1), synthetic(500, 2)
    else:
        images, labels = bilevel.load_mnist(args.data, "train")
        test_images, test_labels = bilevel.load_mnist(args.data, "test")

    # EP needs bounded hidden units (docs/methods.md §5.3).
    activation = "sigmoid" if args.method == "ep" else "relu"
    net = bilevel.mlp([784, 256, 128, 64, 10], activation=activation, init="glorot", seed=1)
    method = bilevel.method(args.method)
    opt = bilevel.optimizer("adam", net, lr=1e-3)
    print(f"{net}, {method.name}, {len(images)} training images")

    def report(epoch):
        print(f"epoch {epoch['epoch']}: loss {epoch['loss']:.4f}, test error "
              f"{100 * epoch['test_error']:.2f}%, {epoch['seconds']:.2f} s")

    bilevel.train(net, method, opt, images, labels, epochs=args.epochs, batch=args.batch,
                  seed=2, test=(test_images, test_labels), callback=report)

    # The same steps by hand: one pass over the first 20 batches.
    start = time.perf_counter()
    for begin in range(0, 20 * args.batch, args.batch):
        x, y = images[begin:begin + args.batch], labels[begin:begin + args.batch]
        g, step = method.gradient(net, x, y)
        opt.step(net, g)
    seconds = time.perf_counter() - start
    print(f"20 hand-written steps: last loss {step['loss']:.4f}, {seconds:.3f} s; "
          f"test error {100 * error(net, method, test_images, test_labels):.2f}%")


if __name__ == "__main__":
    main()
