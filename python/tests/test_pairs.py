"""Activation pairs written in Python: the library's checker accepts a right one and rejects a
wrong one, a Python tanh trains as the built-in tanh, and errors inside its functions reach
the caller."""
import numpy as np
import pytest

import bilevel


def xlogx(x):
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1)), 0.0)


def tanh_pair(**extra):
    """tanh = G' with G(a) = log cosh a, G*(z) = ((1 + z) log(1 + z) + (1 - z) log(1 - z)) / 2
    on [-1, 1]."""
    def G_conj(z):
        inside = np.abs(z) <= 1
        zc = np.clip(z, -1, 1)
        return np.where(inside, (xlogx(1 + zc) + xlogx(1 - zc)) / 2, np.inf)

    return bilevel.pair("python_tanh", f=np.tanh,
                        G=lambda a: np.logaddexp(a, -a) - np.log(2), G_conj=G_conj,
                        df=lambda a: 1 - np.tanh(a) ** 2, **extra)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, 6)), rng.integers(0, 10, 8)


def twins(hidden):
    """The same float64 network with the built-in tanh and with `hidden`."""
    builtin = bilevel.mlp([6, 7, 5, 10], activation="tanh", seed=4, dtype="float64")
    written = bilevel.mlp([6, 7, 5, 10], activation=hidden, seed=4, dtype="float64")
    assert np.array_equal(builtin.parameters, written.parameters)
    return builtin, written


def test_the_checker_accepts_a_right_pair_and_rejects_a_wrong_one():
    ok, failures = bilevel.check_pair(tanh_pair())
    assert ok, failures
    ok, failures = bilevel.check_pair(tanh_pair(inverse=np.arctanh))
    assert ok, failures
    wrong = bilevel.pair("wrong", f=np.tanh, G=lambda a: np.logaddexp(a, -a),
                         G_conj=lambda z: np.where(np.abs(z) <= 1, z ** 2, np.inf),
                         df=lambda a: 1 - np.tanh(a) ** 2)
    ok, failures = bilevel.check_pair(wrong)
    assert not ok and "Fenchel-Young" in failures


@pytest.mark.parametrize("name,settings,tolerance", [
    ("bp", {}, 1e-13),
    ("fenbp", {"beta": 0.01}, 1e-10),
    ("pcn", {}, 1e-6),
    ("chl", {}, 1e-6),
    ("mac", {}, 1e-6),
    ("lpom", {"lambda_": 10}, 1e-6),
    ("fln", {"lambda_": 10}, 1e-6),
    ("altmin", {}, 1e-6),
])
def test_a_python_tanh_is_the_builtin_tanh(name, settings, tolerance):
    builtin, written = twins(tanh_pair())
    x, y = batch()
    expected, _ = bilevel.method(name, **settings).gradient(builtin, x, y)
    g, report = bilevel.method(name, **settings).gradient(written, x, y)
    assert report["unconverged"] == 0
    assert np.linalg.norm(g - expected) <= tolerance * np.linalg.norm(expected)


def test_a_python_pair_trains_with_the_run_loop_and_checkpoints(tmp_path):
    rng = np.random.default_rng(0)
    prototypes = rng.standard_normal((10, 20))
    labels = rng.integers(0, 10, 400)
    images = prototypes[labels] + 0.3 * rng.standard_normal((400, 20))
    net = bilevel.mlp([20, 16, 10], activation=tanh_pair(), seed=1)
    method, opt = bilevel.method("lpom"), bilevel.optimizer("adam", net, lr=3e-3)
    history = bilevel.train(net, method, opt, images, labels, epochs=4, batch=20,
                            test=(images, labels))
    assert history[-1]["test_error"] < 0.15
    bilevel.save_checkpoint(tmp_path / "pair.ckpt", net)
    again = bilevel.mlp([20, 16, 10], activation=tanh_pair(), seed=2)
    bilevel.load_checkpoint(tmp_path / "pair.ckpt", again)
    assert np.array_equal(again.parameters, net.parameters)


def test_errors_inside_a_python_pair_reach_the_caller():
    def failing(a):
        raise ValueError("no activation today")

    broken = bilevel.pair("broken", f=failing, G=np.abs, G_conj=np.abs, df=np.ones_like)
    net = bilevel.mlp([6, 5, 10], activation=broken, dtype="float64")
    x, y = batch()
    for call in (lambda: bilevel.method("bp").gradient(net, x, y),
                 lambda: bilevel.method("lpom", inner_iterations=20).gradient(net, x, y),
                 lambda: net.predict(x)):
        with pytest.raises(ValueError, match="no activation today"):
            call()
    shapeless = bilevel.pair("shapeless", f=lambda a: a.sum(axis=1), G=np.abs, G_conj=np.abs,
                             df=np.ones_like)
    net = bilevel.mlp([6, 5, 10], activation=shapeless, dtype="float64")
    with pytest.raises(bilevel.ShapeError, match=r"shapeless: f must return shape \(8, 5\)"):
        bilevel.method("bp").gradient(net, x, y)
    with pytest.raises(bilevel.ConfigError, match="df or vjp"):
        bilevel.pair("underived", f=np.tanh, G=np.abs, G_conj=np.abs)
    with pytest.raises(bilevel.ConfigError, match="G must be callable"):
        bilevel.pair("uncallable", f=np.tanh, G=3, G_conj=np.abs, df=np.ones_like)


def test_ep_refuses_a_python_pair_by_name():
    net = bilevel.mlp([6, 5, 10], activation=tanh_pair(), dtype="float64")
    x, y = batch()
    with pytest.raises(bilevel.ConfigError, match="python_tanh"):
        bilevel.method("ep").gradient(net, x, y)
