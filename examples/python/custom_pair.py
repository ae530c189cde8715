#!/usr/bin/env python3
"""An activation pair written in Python: ELU, f(a) = a for a > 0 and e^a - 1 below, with its
potential G and conjugate G*, checked by the library's pair checker and trained with Fenchel BP
and PCN (README "From Python"); its proximal map is left to the library's bisection.

    python3 examples/python/custom_pair.py
"""
import time

import numpy as np

import bilevel


def elu_pair():
    def f(a):
        return np.where(a > 0, a, np.expm1(np.minimum(a, 0)))

    def G(a):  # the integral of f from 0
        return np.where(a > 0, a * a / 2, np.expm1(np.minimum(a, 0)) - np.minimum(a, 0))

    def G_conj(z):  # sup_a z a - G(a): z^2 / 2 for z >= 0, (1 + z) log(1 + z) - z on [-1, 0)
        inside = np.maximum(z, -1)
        safe = np.maximum(inside, -1 + 1e-300)
        log_part = np.where(inside > -1, (1 + inside) * np.log1p(safe), 0)
        return np.where(z >= 0, z * z / 2, np.where(z >= -1, log_part - z, np.inf))

    def df(a):
        return np.where(a > 0, 1.0, np.exp(np.minimum(a, 0)))

    def inverse(z):  # some a with f(a) = z, for z > -1
        return np.where(z > 0, z, np.log1p(np.maximum(z, -1 + 1e-16)))

    return bilevel.pair("elu", f=f, G=G, G_conj=G_conj, df=df, inverse=inverse)


def digits(samples, seed):
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(0).random((10, 784)).astype(np.float32)
    labels = rng.integers(0, 10, samples)
    return prototypes[labels] + 0.3 * rng.standard_normal((samples, 784)).astype(np.float32), labels


def step_seconds(method, net, x, y, repeats=3):
    method.gradient(net, x, y)
    start = time.perf_counter()
    for _ in range(repeats):
        method.gradient(net, x, y)
    return (time.perf_counter() - start) / repeats


def main():
    elu = elu_pair()
    ok, failures = bilevel.check_pair(elu)
    print(f"pair checker: {'ok' if ok else 'failed'}{'' if ok else chr(10) + failures}")
    if not ok:
        raise SystemExit(1)

    images, labels = digits(2000, 1)
    test = digits(500, 2)
    for name in ("fenbp", "pcn"):
        net = bilevel.mlp([784, 256, 128, 64, 10], activation=elu, seed=1)
        method, opt = bilevel.method(name), bilevel.optimizer("adam", net, lr=1e-3)
        history = bilevel.train(net, method, opt, images, labels, epochs=1, batch=50, seed=2,
                                test=test)
        print(f"{name} with the Python ELU: {1e3 * step_seconds(method, net, *test):.1f} ms per "
              f"step of {len(test[0])} samples, test error {100 * history[-1]['test_error']:.1f}%")
        if history[-1]["test_error"] > 0.2:
            raise SystemExit(f"{name} with the Python ELU did not learn")


if __name__ == "__main__":
    main()
