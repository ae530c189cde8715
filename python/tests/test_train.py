"""bilevel.train is the C++ trainer: the same data, seeds and settings give the same parameters
to the last bit, for every method (and both scalars, and native steps); and the run loop as
Python sees it: its seed, the caller's floating-point mode, callbacks and Ctrl-C."""
import os
import signal
import subprocess
import threading

import numpy as np
import pytest

import bilevel

TRAINER = os.environ.get("BILEVEL_TRAINER", "")

# (method, activation, trainer flags, bilevel.method keywords): the same settings both ways.
CASES = [
    ("bp", "relu", [], {}),
    ("fenbp", "relu", ["--beta", "0.01"], {"beta": 0.01}),
    ("chl", "relu", ["--beta", "0.1", "--gamma", "1"], {"beta": 0.1, "gamma": 1}),
    ("ep", "sigmoid", ["--beta", "0.5", "--nudged-iterations", "4", "--seed", "3"],
     {"beta": 0.5, "nudged_iterations": 4, "seed": 3}),
    ("pcn", "relu", ["--beta", "1"], {"beta": 1}),
    ("zil", "relu", [], {}),
    ("mac", "relu", ["--mu", "10", "--mu-growth", "1"], {"mu": 10, "mu_growth": 1}),
    ("lpom", "relu", ["--lambda", "10"], {"lambda_": 10}),
    ("fln", "relu", ["--lambda", "10"], {"lambda_": 10}),
    ("altmin", "relu", ["--mu", "3e-5"], {"mu": 3e-5, "learning_rate": 1e-3}),
]


def trainer_parameters(tmp_path, mnist_dir, method, activation, flags, precision="float",
                       step_mode="gradient"):
    out = tmp_path / "trainer"
    out.mkdir()
    subprocess.run([TRAINER, "--data", str(mnist_dir), "--layers", "784,16,10", "--method",
                    method, "--activation", activation, "--epochs", "2", "--batch", "20",
                    "--train-samples", "300", "--validation", "0", "--seed", "3", "--lr",
                    "0.001", "--optimizer", "adam", "--schedule", "constant", "--threads", "1",
                    "--precision", precision, "--step-mode", step_mode, "--export", str(out),
                    "--quiet", *flags],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def module_parameters(tmp_path, mnist_dir, method, activation, settings, dtype="float32",
                      step_mode="gradient"):
    images, labels = bilevel.load_mnist(mnist_dir, "train", dtype=dtype)
    test = bilevel.load_mnist(mnist_dir, "test", dtype=dtype)
    net = bilevel.mlp([784, 16, 10], activation=activation, seed=3, dtype=dtype)
    opt = bilevel.optimizer("adam", net, lr=1e-3)
    history = bilevel.train(net, bilevel.method(method, **settings), opt, images, labels,
                            epochs=2, batch=20, seed=4, test=test, step_mode=step_mode)
    assert [h["epoch"] for h in history] == [1, 2]
    out = tmp_path / "module"
    out.mkdir()
    bilevel.export_npy(out, net)
    return out


def assert_same_files(first, second):
    names = sorted(p.name for p in first.glob("*.npy"))
    assert names == sorted(p.name for p in second.glob("*.npy")) and names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


needs_trainer = pytest.mark.skipif(not TRAINER, reason="BILEVEL_TRAINER (mnist_mlp) not given")


@needs_trainer
@pytest.mark.parametrize("method,activation,flags,settings", CASES,
                         ids=[case[0] for case in CASES])
def test_every_method_trains_as_the_trainer(tmp_path, mnist_dir, method, activation, flags,
                                            settings):
    assert_same_files(trainer_parameters(tmp_path, mnist_dir, method, activation, flags),
                      module_parameters(tmp_path, mnist_dir, method, activation, settings))


@needs_trainer
def test_double_precision_trains_as_the_trainer(tmp_path, mnist_dir):
    assert_same_files(
        trainer_parameters(tmp_path, mnist_dir, "pcn", "tanh", ["--beta", "1"], "double"),
        module_parameters(tmp_path, mnist_dir, "pcn", "tanh", {"beta": 1}, "float64"))


@needs_trainer
def test_native_steps_train_as_the_trainer(tmp_path, mnist_dir):
    assert_same_files(
        trainer_parameters(tmp_path, mnist_dir, "lpom", "relu", ["--lambda", "10"],
                           step_mode="native"),
        module_parameters(tmp_path, mnist_dir, "lpom", "relu", {"lambda_": 10},
                          step_mode="native"))


def test_a_python_loop_is_the_run_loop(mnist_dir):
    """method.gradient + opt.step reproduce bilevel.train's parameters: the loop a user writes
    is the library's step, nothing more. One sample, so that the run loop's shuffling cannot
    reorder a batch's sum."""
    images, labels = bilevel.load_mnist(mnist_dir, "train")
    x, y = images[:1], labels[:1]
    nets = [bilevel.mlp([784, 16, 10], seed=5) for _ in range(2)]
    opts = [bilevel.optimizer("adam", net, lr=1e-3) for net in nets]
    bilevel.train(nets[0], bilevel.method("pcn"), opts[0], x, y, epochs=3, batch=1,
                  flush_denormals=False)
    method = bilevel.method("pcn")
    for _ in range(3):
        g, _ = method.gradient(nets[1], x, y)
        opts[1].step(nets[1], g)
    assert np.array_equal(nets[0].parameters, nets[1].parameters)


def test_the_seed_decides_the_order_and_the_callers_float_mode_survives(mnist_dir):
    images, labels = bilevel.load_mnist(mnist_dir, "train")
    runs = []
    for seed in (7, 7, 8):
        net = bilevel.mlp([784, 8, 10], seed=1)
        bilevel.flush_denormals(False)
        bilevel.train(net, bilevel.method("bp"), bilevel.optimizer("adam", net), images, labels,
                      epochs=1, batch=30, seed=seed)
        assert np.float32(1e-38) / np.float32(10) > 0  # gradual underflow again after the run
        runs.append(net.parameters.copy())
    assert np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[2])


def test_a_failing_callback_ends_the_run_with_its_exception(mnist_dir):
    images, labels = bilevel.load_mnist(mnist_dir, "train")
    net = bilevel.mlp([784, 8, 10], seed=1)
    epochs = []

    def stop(result):
        epochs.append(result["epoch"])
        raise KeyError("enough")

    with pytest.raises(KeyError, match="enough"):
        bilevel.train(net, bilevel.method("bp"), bilevel.optimizer("adam", net), images, labels,
                      epochs=3, batch=30, callback=stop)
    assert epochs == [1]


def test_ctrl_c_ends_a_run_after_its_batch(mnist_dir):
    images, labels = bilevel.load_mnist(mnist_dir, "train")
    net = bilevel.mlp([784, 8, 10], seed=1)
    epochs = []
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            bilevel.train(net, bilevel.method("bp"), bilevel.optimizer("adam", net), images,
                          labels, epochs=20000, batch=30, callback=epochs.append)
    finally:
        timer.cancel()
    assert 0 < len(epochs) < 20000
    assert np.all(np.isfinite(net.parameters))
