"""Shared fixtures of the Python module's tests: small MNIST-like data sets in idx files."""
import gzip
import struct

import numpy as np
import pytest

import bilevel


def write_idx(path, array, compress=False):
    """An idx file (the MNIST format) of a uint8 array."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(payload)


def digits(count, seed, size=28):
    """Ten noisy prototypes: images (count, size, size) uint8 and labels (count,)."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(12345).random((10, size, size)) < 0.3
    labels = rng.integers(0, 10, count).astype(np.uint8)
    noise = rng.random((count, size, size)) < 0.1
    images = (prototypes[labels] ^ noise).astype(np.uint8) * 255
    return images, labels


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A directory with the four MNIST files: 300 training and 100 test images (the test
    labels gzip-compressed, as the library reads either)."""
    directory = tmp_path_factory.mktemp("mnist")
    train_images, train_labels = digits(300, seed=1)
    test_images, test_labels = digits(100, seed=2)
    write_idx(directory / "train-images-idx3-ubyte", train_images)
    write_idx(directory / "train-labels-idx1-ubyte", train_labels)
    write_idx(directory / "t10k-images-idx3-ubyte", test_images)
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", test_labels, compress=True)
    return directory


@pytest.fixture(autouse=True)
def one_thread():
    """One thread, as the C++ trainer's default, so that results compare bit for bit."""
    bilevel.set_threads(1)
