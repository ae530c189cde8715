"""NumPy in and out: rows are samples, the parameters view writes through, other dtypes and
layouts are converted, wrong ones refused with the library's messages."""
import copy

import numpy as np
import pytest

import bilevel


def data(samples=4, inputs=5, dtype=np.float32):
    rng = np.random.default_rng(0)
    return rng.random((samples, inputs)).astype(dtype), rng.integers(0, 3, samples)


def small(dtype="float32"):
    return bilevel.mlp([5, 4, 3], seed=1, dtype=dtype)


def test_rows_are_samples():
    net = small("float64")
    x, _ = data(dtype=np.float64)
    together = net.predict(x)
    assert together.shape == (4, 3)
    for j in range(4):
        assert np.array_equal(net.predict(x[j:j + 1])[0], together[j])


def test_parameters_view_writes_through_and_outlives_the_name():
    net = small()
    view = net.parameters
    assert view.dtype == np.float32 and view.shape == (net.parameters.size,)
    view[:] = 0
    x, _ = data()
    assert np.array_equal(net.predict(x), np.zeros((4, 3), np.float32))
    del net
    view[0] = 1  # the view keeps the network alive
    assert view[0] == 1


def test_labels_and_one_hot_targets_agree():
    net = small()
    x, y = data()
    method = bilevel.method("bp")
    g_labels, _ = method.gradient(net, x, y)
    g_targets, _ = method.gradient(net, x, np.eye(3, dtype=np.float32)[y])
    assert np.array_equal(g_labels, g_targets)


@pytest.mark.parametrize("convert", [
    lambda x: x.astype(np.float64),
    lambda x: np.asfortranarray(x),
    lambda x: np.repeat(x, 2, axis=0)[::2],
    lambda x: x.tolist(),
], ids=["float64", "fortran", "strided", "list"])
def test_other_layouts_and_dtypes_are_converted(convert):
    net = small()
    x, y = data()
    method = bilevel.method("bp")
    expected, _ = method.gradient(net, x, y)
    g, _ = method.gradient(net, convert(x), y)
    assert np.array_equal(g, expected)


def test_gradient_feeds_the_optimizer_and_optimizer_checks_it():
    net = small()
    x, y = data()
    g, _ = bilevel.method("bp").gradient(net, x, y)
    opt = bilevel.optimizer("sgd", net, lr=0.5)
    before = net.parameters.copy()
    opt.step(net, g)
    assert np.allclose(net.parameters, before - np.float32(0.5) * g, rtol=0, atol=1e-7)
    n = g.size
    with pytest.raises(bilevel.ShapeError, match=rf"g must have shape \({n},\).*got \({n - 1},\)"):
        opt.step(net, g[:-1])
    other = bilevel.mlp([5, 6, 3], seed=1)
    with pytest.raises(bilevel.ConfigError, match="parameter count"):
        opt.step(other, np.zeros(other.parameters.size, np.float32))


def test_errors_name_the_python_shapes():
    net = small()
    x, y = data()
    method = bilevel.method("bp")
    with pytest.raises(bilevel.ShapeError, match=r"x must have shape \(B, 5\).*got \(5, 4\)"):
        method.gradient(net, x.T, y)
    with pytest.raises(bilevel.ShapeError, match=r"got \(5,\)"):
        method.gradient(net, x[0], y)
    with pytest.raises(bilevel.ShapeError, match=r"one label per sample \(4\)"):
        method.gradient(net, x, y[:3])
    with pytest.raises(bilevel.DataError, match="label 1 is 7, expected 0 to 2"):
        method.gradient(net, x, np.array([0, 7, 1, 2]))
    with pytest.raises(bilevel.DataError, match="label 2 is 3, expected 0 to 2"):
        method.gradient(net, x, np.array([0, 1, 3, 2]))
    with pytest.raises(bilevel.DataError, match="label 0 is -1"):
        method.gradient(net, x, np.array([-1, 1, 0, 2]))
    with pytest.raises(bilevel.ShapeError, match=r"one row per sample of x \(4\); got 3 rows"):
        method.gradient(net, x, np.eye(3, dtype=np.float32)[y[:3]])
    with pytest.raises(bilevel.ShapeError,
                       match=r"y \(targets, or 1-D labels\) must have shape \(B, 3\)"):
        method.gradient(net, x, np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="labels y must be integers"):
        method.gradient(net, x, y.astype(np.float32))
    with pytest.raises(TypeError, match="x must be an array of real numbers"):
        method.gradient(net, np.array([["a"] * 5] * 4), y)
    assert issubclass(bilevel.ShapeError, ValueError)
    assert issubclass(bilevel.ShapeError, bilevel.Error)


def test_non_finite_input_is_refused():
    net = small()
    x, y = data()
    x[1, 2] = np.nan
    with pytest.raises(bilevel.Error):
        bilevel.method("bp").gradient(net, x, y)


def test_settings_are_checked_when_made():
    with pytest.raises(bilevel.ConfigError, match='bp has no setting "beta"'):
        bilevel.method("bp", beta=0.1)
    with pytest.raises(bilevel.ConfigError, match='unknown method "nope"'):
        bilevel.method("nope")
    with pytest.raises(bilevel.ConfigError, match="beta"):
        bilevel.method("chl", beta=-1)
    with pytest.raises(bilevel.ConfigError, match="dtype must be float32 or float64, got int32"):
        bilevel.mlp([5, 3], dtype="int32")
    with pytest.raises(bilevel.ConfigError, match="unknown pair"):
        bilevel.mlp([5, 3, 3], activation="swish")
    with pytest.raises(bilevel.ConfigError, match="conv7"):
        bilevel.network("conv7-dense10")
    with pytest.raises(bilevel.ConfigError, match='"adam" or "sgd"'):
        bilevel.optimizer("lion", small())


def test_a_method_keeps_to_one_dtype():
    method = bilevel.method("bp")
    x, y = data()
    method.gradient(small(), x, y)
    with pytest.raises(bilevel.ConfigError, match="first used with float32"):
        method.gradient(small("float64"), x, y)


def test_float64_networks_compute_in_float64():
    net = small("float64")
    x, y = data(dtype=np.float64)
    g, _ = bilevel.method("bp").gradient(net, x, y)
    assert g.dtype == np.float64 and net.predict(x).dtype == np.float64


def test_a_copy_is_independent():
    net = small()
    for twin in (net.copy(), copy.deepcopy(net)):
        assert np.array_equal(twin.parameters, net.parameters)
        assert twin.parameters.ctypes.data != net.parameters.ctypes.data
        twin.parameters[:] = 0
        assert np.any(net.parameters != 0)
