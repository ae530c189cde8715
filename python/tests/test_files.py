"""Data, checkpoints and the NumPy export from Python."""
import numpy as np
import pytest

import bilevel
from conftest import digits


def test_load_mnist_reads_both_splits(mnist_dir):
    images, labels = bilevel.load_mnist(mnist_dir, "train")
    expected, expected_labels = digits(300, seed=1)
    assert images.shape == (300, 784) and images.dtype == np.float32
    assert labels.dtype == np.uint8 and np.array_equal(labels, expected_labels)
    assert np.array_equal(images, expected.reshape(300, 784).astype(np.float32) / 255)
    test_images, _ = bilevel.load_mnist(mnist_dir, "test", dtype=np.float64)
    assert test_images.shape == (100, 784) and test_images.dtype == np.float64
    with pytest.raises(bilevel.DataError, match="nowhere: No such file"):
        bilevel.load_mnist(mnist_dir / "nowhere")
    with pytest.raises(bilevel.DataError, match="missing .*t10k-labels-idx1-ubyte"):
        bilevel.load_mnist(mnist_dir / "..", "test")
    with pytest.raises(bilevel.ConfigError, match="split"):
        bilevel.load_mnist(mnist_dir, "validation")


def test_checkpoint_restores_everything_and_keeps_the_view(tmp_path, mnist_dir):
    images, labels = bilevel.load_mnist(mnist_dir, "train")
    net = bilevel.mlp([784, 8, 10], seed=1)
    method, opt = bilevel.method("pcn"), bilevel.optimizer("adam", net)
    bilevel.train(net, method, opt, images, labels, epochs=1, batch=30)
    path = tmp_path / "run.ckpt"
    bilevel.save_checkpoint(path, net, opt, method)
    view, saved = net.parameters, net.parameters.copy()
    continued = [bilevel.train(net, method, opt, images, labels, epochs=1, batch=30, seed=9)]
    after_one_more = net.parameters.copy()
    bilevel.load_checkpoint(path, net, opt, method)
    assert net.parameters.ctypes.data == view.ctypes.data  # restored into the same buffer
    assert np.array_equal(view, saved)
    continued.append(bilevel.train(net, method, opt, images, labels, epochs=1, batch=30, seed=9))
    assert np.array_equal(net.parameters, after_one_more)  # Adam's moments came back too
    assert continued[0][0]["loss"] == continued[1][0]["loss"]

    damaged = bytearray(path.read_bytes())
    damaged[-10] ^= 0xFF
    (tmp_path / "bad.ckpt").write_bytes(bytes(damaged))
    with pytest.raises(bilevel.DataError, match="checksum"):
        bilevel.load_checkpoint(tmp_path / "bad.ckpt", net, opt, method)
    assert np.array_equal(net.parameters, after_one_more)  # all or nothing
    with pytest.raises(bilevel.DataError):
        bilevel.load_checkpoint(path, bilevel.mlp([784, 9, 10]))


def test_npy_export_round_trips_and_numpy_reads_it(tmp_path):
    net = bilevel.mlp([5, 4, 3], activation="tanh", seed=3, dtype="float64")
    bilevel.export_npy(tmp_path, net)
    W1, b1 = np.load(tmp_path / "W1.npy"), np.load(tmp_path / "b1.npy")
    W2, b2 = np.load(tmp_path / "W2.npy"), np.load(tmp_path / "b2.npy")
    x = np.random.default_rng(0).random((6, 5))
    assert np.allclose(net.predict(x), np.tanh(x @ W1.T + b1) @ W2.T + b2, rtol=1e-13)
    other = bilevel.mlp([5, 4, 3], activation="tanh", seed=4, dtype="float64")
    bilevel.import_npy(tmp_path, other)
    assert np.array_equal(other.parameters, net.parameters)


@pytest.mark.parametrize("make,layers", [
    (lambda: bilevel.mlp([5, 4, 3], seed=3), 2),
    (lambda: bilevel.network("conv3k3s2p1-pool2-dense4-dense3", image=(2, 6, 6), seed=3), 3),
], ids=["mlp", "cnn"])
def test_layer_views_are_the_exported_arrays_and_write_through(tmp_path, make, layers):
    net = make()
    bilevel.export_npy(tmp_path, net)
    with_parameters = [k for k in range(1, net.depth + 1) if (tmp_path / f"W{k}.npy").exists()]
    assert len(with_parameters) == layers
    for k in with_parameters:
        assert np.array_equal(net.weights(k), np.load(tmp_path / f"W{k}.npy"))
        assert np.array_equal(net.bias(k), np.load(tmp_path / f"b{k}.npy"))
    last = with_parameters[-1]
    net.weights(last)[:] = 0
    net.bias(last)[:] = [1, 2, 3]
    x = np.random.default_rng(0).random((2, net.input_size), dtype=np.float32)
    assert np.array_equal(net.predict(x), np.array([[1, 2, 3]] * 2, np.float32))
    with pytest.raises(bilevel.ConfigError, match=f"the layer k must be 1 to {net.depth}, got 0"):
        net.bias(0)


def test_a_pooling_layer_has_no_parameters_to_view():
    net = bilevel.network("conv3k3p1-pool2-dense3", image=(1, 4, 4))
    with pytest.raises(bilevel.ConfigError,
                       match="layer 2 must be a layer with parameters, got a pooling layer"):
        net.weights(2)
