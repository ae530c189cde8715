"""Gradients from Python against the math: finite differences of the loss, and every method's
gradient tending to back-propagation's as its spacing shrinks (docs/methods.md §5)."""
import numpy as np
import pytest

import bilevel


def batch(inputs, samples=8, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((samples, inputs)).astype(dtype), rng.integers(0, 10, samples)


def test_bp_gradient_is_the_loss_derivative():
    """Central differences of the batch loss through the writable parameters view."""
    net = bilevel.mlp([6, 5, 10], activation="tanh", seed=2, dtype="float64")
    x, y = batch(6)
    bp = bilevel.method("bp")
    g, report = bp.gradient(net, x, y)
    p = net.parameters
    h = 1e-6
    for i in np.random.default_rng(1).choice(p.size, 12, replace=False):
        saved = p[i]
        p[i] = saved + h
        up = bp.gradient(net, x, y)[1]["loss"]
        p[i] = saved - h
        down = bp.gradient(net, x, y)[1]["loss"]
        p[i] = saved
        assert abs((up - down) / (2 * h) - g[i]) < 1e-7 * max(1.0, abs(g[i]))
    assert report["loss"] == bp.gradient(net, x, y)[1]["loss"]


@pytest.mark.parametrize("name,spacing,activation", [
    ("fenbp", {"beta": 1e-5}, "relu"),
    ("chl", {"beta": 1e-4}, "relu"),
    ("ep", {"beta": 1e-4, "converged": True}, "sigmoid"),
    ("pcn", {"beta": 1e-4}, "tanh"),
    ("mac", {"mu": 1e5}, "relu"),
    ("lpom", {"lambda_": 1e5}, "relu"),
    ("fln", {"lambda_": 1e5}, "relu"),
])
def test_every_method_tends_to_bp(name, spacing, activation):
    net = bilevel.mlp([6, 7, 5, 10], activation=activation, seed=4, dtype="float64")
    x, y = batch(6, seed=3)
    reference, _ = bilevel.method("bp").gradient(net, x, y)
    g, report = bilevel.method(name, **spacing).gradient(net, x, y)
    assert report["unconverged"] == 0
    if name == "ep":  # EP's gradient is of its own energy model, not the feed-forward loss
        reference, _ = bilevel.method("ep", beta=1e-3, converged=True).gradient(net, x, y)
    error = np.linalg.norm(g - reference) / np.linalg.norm(reference)
    assert error < 1e-2, error


def test_zil_is_bp():
    net = bilevel.mlp([6, 7, 5, 10], activation="tanh", seed=4, dtype="float64")
    x, y = batch(6, seed=3)
    g, _ = bilevel.method("zil").gradient(net, x, y)
    reference, _ = bilevel.method("bp").gradient(net, x, y)
    assert np.allclose(g, reference, rtol=1e-12, atol=1e-14)


def test_conv_network_gradient_tends_to_bp():
    net = bilevel.network("conv3k3p1-pool2-dense10", image=(2, 6, 6), activation="tanh",
                          dtype="float64", seed=7)
    assert net.input_size == 72 and net.output_size == 10
    x, y = batch(72, samples=5)
    reference, _ = bilevel.method("bp").gradient(net, x, y)
    g, _ = bilevel.method("fenbp", beta=1e-6).gradient(net, x, y)
    assert np.linalg.norm(g - reference) < 1e-4 * np.linalg.norm(reference)
    assert net.predict(x).shape == (5, 10)


@pytest.mark.parametrize("name", sorted(bilevel.methods()))
def test_every_method_learns(name):
    """Ten noisy prototypes in 20 dimensions: every method's training error falls below 15%."""
    rng = np.random.default_rng(0)
    prototypes = rng.standard_normal((10, 20))
    labels = rng.integers(0, 10, 600)
    images = (prototypes[labels] + 0.3 * rng.standard_normal((600, 20))).astype(np.float32)
    activation = "sigmoid" if name == "ep" else "relu"
    net = bilevel.mlp([20, 32, 10], activation=activation, seed=1)
    settings = {"learning_rate": 3e-3} if name == "altmin" else {}
    method = bilevel.method(name, **settings)
    opt = bilevel.optimizer("adam", net, lr=3e-3)
    history = bilevel.train(net, method, opt, images, labels, epochs=6, batch=20, seed=2,
                            test=(images, labels))
    assert history[-1]["test_error"] < 0.15, history[-1]
    assert history[-1]["test_error"] < history[0]["test_error"] or history[0]["test_error"] < 0.05


def test_unconverged_inner_solves_warn():
    net = bilevel.mlp([6, 7, 10], seed=1, dtype="float64")
    x, y = batch(6)
    with pytest.warns(bilevel.UnconvergedWarning, match="pcn"):
        _, report = bilevel.method("pcn", inner_iterations=1).gradient(net, x, y)
    assert report["unconverged"] > 0


def test_pcn_inference_dynamics_share_the_equilibrium():
    """Plain, momentum and Anderson inference end at one equilibrium (docs/methods.md §5.4);
    a name outside the three is refused, naming the setting."""
    net = bilevel.mlp([6, 7, 5, 10], activation="tanh", seed=4, dtype="float64")
    x, y = batch(6, seed=3)
    estimates = {}
    for inference in ("plain", "momentum", "anderson"):
        g, report = bilevel.method("pcn", inference=inference, tolerance=1e-8).gradient(net, x, y)
        assert report["unconverged"] == 0
        estimates[inference] = g
    for inference in ("momentum", "anderson"):
        error = np.linalg.norm(estimates[inference] - estimates["plain"])
        assert error < 1e-5 * np.linalg.norm(estimates["plain"]), (inference, error)
    with pytest.raises(bilevel.ConfigError, match='inference must be "plain", "momentum" or'):
        bilevel.method("pcn", inference="nesterov")
