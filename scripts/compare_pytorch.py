"""One training epoch of a bilevel method in PyTorch, timed like bilevel's trainers time their own.

Run by scripts/compare-pytorch.sh with Debian's python3 and python3-torch. Prints one JSON line:
the epoch's training seconds (steps only: for BP forward, loss, backward and the optimizer; for
PCN and EP the inference phases, the local weight updates and the optimizer; the data is already
a float32 tensor in memory) and the samples per second.

usage: compare_pytorch.py DATA_DIR [--method bp|fenbp|pcn|ep|lenet5] [--samples N] [--batch B]
                          [--threads T] [method settings, see --help]

--method bp, fenbp: the Fenchel BP paper's MLP 784-256-128-64-10 ReLU, Adam 1e-3, batch 50,
shuffled per epoch (mnist_mlp --method bp|fenbp). Fenchel BP as a user would write it: a custom
autograd function per ReLU whose backward returns (f(a) - f(a - beta g)) / beta (docs/methods.md
§5.2) instead of the derivative; beta per sample, as in bilevel.

--method lenet5: BP on LeNet-5 (mnist_mlp --model lenet5 --method bp): 5 x 5 convolutions of 6
(zero padding 2) and 16 filters, each followed by ReLU and 2 x 2 average pooling, then dense
layers of 120, 84 and 10 (ReLU between them), Glorot weights with PyTorch's convolution fans,
zero biases, Adam 1e-3, batch 50, shuffled.

--method pcn: predictive coding (docs/methods.md §5.4, methods/pcn.hpp), written as PC papers'
code is: hand-written errors and local updates under torch.no_grad(). Per batch, from the forward
pass, T synchronous gradient steps z_k <- z_k - rate dF/dz_k on the hidden states of
F = sum_k 1/2 ||z_k - f(W_k z_{k-1} + b_k)||^2 + s CE(W_L z_{L-1} + b_L, y), then each layer's
local gradient sig_k z_{k-1}^T / (s B) (sig_k = -f'(a_k) eps_k, top: s (softmax - y)) goes to
torch.optim.Adam. Defaults: the paper's MLP with ReLU, batch 50, s = 1, rate 0.1, T = 20 fixed
steps (mnist_mlp --method pcn --layers 784,256,128,64,10 --activation relu --batch 50
--inner-step 0.1 --inner-iterations 20 with a tolerance too small to stop it).

--method ep: equilibrium propagation on 784-500-10 with Scellier & Bengio's code's settings, as
examples/ep_mnist runs it (methods/ep.hpp, paper_settings(1)): hard-sigmoid states clipped to
[0, 1] (so rho(s) = s, rho' = 1), synchronous steps s <- clip(s - eps dE/ds) with eps 0.5, 20 free
steps from each image's persistent particle, 4 nudged steps with beta of a random sign per batch,
the one-sided estimate, plain SGD with per-layer rates, batch 20 in fixed order (as the code and
ep_mnist: no shuffling), Glorot weights, biases 0. The cost is 1/2 ||s_out - y||^2, so beta and
the rates are twice the code's (1 and 0.2, 0.1 for its 0.5 and 0.1, 0.05): the same steps. The
train error is the running error of the free phases, as ep_mnist reports it.
"""

import argparse
import gzip
import json
import os
import random
import struct
import sys
import time

import torch
import torch.nn.functional as F


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as stream:
        data = stream.read()
    zero, kind, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or kind != 0x08:
        sys.exit(f"compare_pytorch.py: {path}: not an unsigned-byte idx file")
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    payload = torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8)
    return payload.reshape(shape)


def find(directory, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.exists(path):
            return path
    sys.exit(f"compare_pytorch.py: {name} not found in {directory}")


def glorot_layers(sizes):
    """Linear layers with Glorot uniform weights and zero biases, as bilevel's default."""
    layers = torch.nn.ModuleList(torch.nn.Linear(sizes[k], sizes[k + 1])
                                 for k in range(len(sizes) - 1))
    for layer in layers:
        torch.nn.init.xavier_uniform_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    return layers


class FenchelReLU(torch.autograd.Function):
    """ReLU whose backward is the Fenchel BP signal (f(a) - f(a - beta g)) / beta."""

    @staticmethod
    def forward(context, a, beta):
        context.save_for_backward(a)
        context.beta = beta
        return a.clamp_min(0)

    @staticmethod
    def backward(context, g):
        (a,) = context.saved_tensors
        # Autograd's g is the gradient of the batch-mean loss, B times smaller than the
        # per-sample error bilevel's beta refers to (docs/methods.md §1).
        batch = a.shape[0]
        per_sample = g * batch
        signal = (a.clamp_min(0) - (a - context.beta * per_sample).clamp_min(0)) / context.beta
        return signal / batch, None


class LeNet5(torch.nn.Module):
    """LeNet-5 with average pooling and ReLU, as mnist_mlp --model lenet5 builds it."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = torch.nn.Conv2d(6, 16, 5)
        self.dense = glorot_layers([400, 120, 84, 10])
        for conv in (self.conv1, self.conv2):
            torch.nn.init.xavier_uniform_(conv.weight)
            torch.nn.init.zeros_(conv.bias)

    def forward(self, images):
        h = F.avg_pool2d(torch.relu(self.conv1(images.view(-1, 1, 28, 28))), 2)
        h = F.avg_pool2d(torch.relu(self.conv2(h)), 2).flatten(1)
        for k, layer in enumerate(self.dense):
            h = layer(h)
            if k + 1 < len(self.dense):
                h = torch.relu(h)
        return h


def autograd_epoch(args, forward, parameters, x, labels):
    """One shuffled epoch of forward, loss, backward and Adam; the timed part of BP."""
    optimizer = torch.optim.Adam(parameters, lr=args.lr)
    loss_function = torch.nn.CrossEntropyLoss()
    order = torch.randperm(len(x))
    start = time.perf_counter()
    for begin in range(0, len(x), args.batch):
        index = order[begin:begin + args.batch]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_function(forward(x[index]), labels[index])
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        correct = (forward(x).argmax(1) == labels).sum().item()
    return {"seconds": seconds, "train_error": 1 - correct / len(x)}


def train_lenet5(args, x, labels):
    """BP on LeNet-5."""
    network = LeNet5()
    return autograd_epoch(args, network, network.parameters(), x, labels)


def train_backprop(args, x, labels):
    """BP or Fenchel BP on an MLP."""
    layers = glorot_layers(args.layers)

    def forward(batch):
        h = batch
        for k, layer in enumerate(layers):
            h = layer(h)
            if k + 1 < len(layers):
                h = FenchelReLU.apply(h, args.beta) if args.method == "fenbp" else torch.relu(h)
        return h

    return autograd_epoch(args, forward, layers.parameters(), x, labels)


def activation(name):
    """The hidden pair f and its derivative f'."""
    if name == "relu":
        return torch.relu, lambda a: (a > 0).to(a.dtype)

    def sigmoid_derivative(a):
        value = torch.sigmoid(a)
        return value * (1 - value)

    return torch.sigmoid, sigmoid_derivative


def pcn_gradients(layers, f, df, x, y, spacing, rate, steps):
    """PCN's local gradients of one batch (x, one-hot y: rows are samples) into the layers'
    .grad; returns the forward pass's logits."""
    L = len(layers)
    W = [None] + [layer.weight for layer in layers]  # W[k], b[k]: layer k, 1-based
    b = [None] + [layer.bias for layer in layers]
    with torch.no_grad():
        # The forward pass: a[k] = W_k z_{k-1} + b_k, z[k] = f(a[k]); z[0] = x stays.
        z, a = [x] + [None] * L, [None] * (L + 1)
        for k in range(1, L + 1):
            a[k] = F.linear(z[k - 1], W[k], b[k])
            if k < L:
                z[k] = f(a[k])
        logits = a[L]
        # Inference: `steps` steps on the hidden z, every layer from the same state.
        for t in range(steps + 1):
            eps, sig = [None] * L, [None] * (L + 1)
            for k in range(1, L):
                eps[k] = z[k] - f(a[k])
                sig[k] = -df(a[k]) * eps[k]
            sig[L] = spacing * (torch.softmax(a[L], 1) - y)
            if t == steps:
                break
            for k in range(1, L):  # dF/dz_k = eps_k + W_{k+1}^T sig_{k+1}
                z[k] = z[k] - rate * (eps[k] + sig[k + 1] @ W[k + 1])
            for k in range(2, L + 1):  # z_0 = x does not move, nor does a_1
                a[k] = F.linear(z[k - 1], W[k], b[k])
        # Each layer's gradient from its own signal and input (batch mean, over s).
        batch = len(x)
        for k in range(1, L + 1):
            W[k].grad = sig[k].t() @ z[k - 1] / (spacing * batch)
            b[k].grad = sig[k].sum(0) / (spacing * batch)
    return logits


def train_pcn(args, x, labels):
    """Predictive coding: T inference steps per batch, then local gradients into Adam."""
    f, df = activation(args.activation)
    layers = glorot_layers(args.layers)
    optimizer = torch.optim.Adam(layers.parameters(), lr=args.lr)
    targets = F.one_hot(labels, args.layers[-1]).to(x.dtype)

    order = torch.randperm(len(x))
    loss_sum = torch.zeros(())
    start = time.perf_counter()
    for begin in range(0, len(x), args.batch):
        index = order[begin:begin + args.batch]
        logits = pcn_gradients(layers, f, df, x[index], targets[index], args.beta,
                               args.inference_rate, args.inference_steps)
        loss_sum += F.cross_entropy(logits, labels[index], reduction="sum")
        optimizer.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():  # the network predicts by its forward pass
        h = x
        for k, layer in enumerate(layers):
            h = layer(h) if k + 1 == len(layers) else f(layer(h))
        correct = (h.argmax(1) == labels).sum().item()
    return {"seconds": seconds, "train_error": 1 - correct / len(x),
            "loss": loss_sum.item() / len(x)}


def ep_relax(first, second, drive, s1, s2, steps, step, beta, y):
    """`steps` synchronous steps of EP's dynamics on E + beta C from (s1, s2); drive = W1 x + b1.
    E = 1/2 |s|^2 - rho(s1).(W1 x + b1) - rho(s2).(W2 rho(s1) + b2), C = 1/2 |rho(s2) - y|^2,
    rho the hard sigmoid: the states stay in [0, 1], where rho(s) = s and rho'(s) = 1, so
    s - step dE/ds = (1 - step) s + step h, h the layer's drive, then clipped to [0, 1]."""
    W2, b2 = second.weight, second.bias
    for _ in range(steps):
        h1 = drive + s2 @ W2
        h2 = F.linear(s1, W2, b2)
        if beta != 0:
            h2 = h2 - beta * (s2 - y)
        s1 = ((1 - step) * s1 + step * h1).clamp(0, 1)
        s2 = ((1 - step) * s2 + step * h2).clamp(0, 1)
    return s1, s2


def ep_gradients(first, second, x, y, s1, s2, beta, step, free_steps, nudged_steps):
    """EP's one-sided estimate of one batch into the layers' .grad, the free phase from
    (s1, s2); returns the free phase's end states."""
    with torch.no_grad():
        drive = F.linear(x, first.weight, first.bias)  # the input's drive never changes
        s1, s2 = ep_relax(first, second, drive, s1, s2, free_steps, step, 0.0, y)
        n1, n2 = ep_relax(first, second, drive, s1, s2, nudged_steps, step, beta, y)
        # dE/dW_k = -rho_k rho_{k-1}^T; the estimate is (dE/dtheta at the nudged state -
        # dE/dtheta at the free state) / beta, batch mean.
        scale = 1 / (beta * len(x))
        first.weight.grad = -scale * ((n1 - s1).t() @ x)
        first.bias.grad = -scale * (n1 - s1).sum(0)
        second.weight.grad = -scale * (n2.t() @ n1 - s2.t() @ s1)
        second.bias.grad = -scale * (n2 - s2).sum(0)
    return s1, s2


def train_ep(args, x, labels):
    """Equilibrium propagation: persistent particles, a random sign of beta per batch, the
    one-sided estimate, per-layer SGD, batches in fixed order."""
    if len(args.layers) != 3:
        sys.exit("compare_pytorch.py: --method ep takes one hidden layer (784,500,10)")
    first, second = glorot_layers(args.layers)
    rates = args.ep_rates
    optimizer = torch.optim.SGD([{"params": first.parameters(), "lr": rates[0]},
                                 {"params": second.parameters(), "lr": rates[1]}], lr=rates[0])
    targets = F.one_hot(labels, args.layers[-1]).to(x.dtype)
    # Persistent particles: each image's states, from 0, carried from one epoch to the next.
    hidden = torch.zeros(len(x), args.layers[1])
    output = torch.zeros(len(x), args.layers[2])
    signs = random.Random(args.seed)

    correct = torch.zeros((), dtype=torch.long)
    loss_sum = torch.zeros(())
    start = time.perf_counter()
    for begin in range(0, len(x), args.batch):
        end = min(begin + args.batch, len(x))
        y = targets[begin:end]
        beta = -args.beta if signs.random() < 0.5 else args.beta
        s1, s2 = ep_gradients(first, second, x[begin:end], y, hidden[begin:end],
                              output[begin:end], beta, args.inference_rate,
                              args.inference_steps, args.nudged_steps)
        hidden[begin:end], output[begin:end] = s1, s2
        correct += (s2.argmax(1) == labels[begin:end]).sum()
        loss_sum += 0.5 * ((s2 - y) ** 2).sum()
        optimizer.step()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "train_error": 1 - correct.item() / len(x),
            "loss": loss_sum.item() / len(x)}


def main():
    defaults = {  # per method: layers, batch, learning rate, beta (the trainers' settings)
        "bp": ("784,256,128,64,10", 50, 1e-3, 0.01),
        "fenbp": ("784,256,128,64,10", 50, 1e-3, 0.01),
        "pcn": ("784,256,128,64,10", 50, 1e-3, 1.0),
        "ep": ("784,500,10", 20, None, 1.0),
        "lenet5": ("784,10", 50, 1e-3, 0.0),  # layers unused: LeNet-5's are fixed
    }
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--method", choices=sorted(defaults), default="bp")
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--batch", type=int, help="method default: 50; ep 20")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--layers", help="method default: 784,256,128,64,10; ep 784,500,10")
    parser.add_argument("--lr", type=float, help="Adam's rate (bp, fenbp, pcn; default 1e-3)")
    parser.add_argument("--beta", type=float,
                        help="fenbp: spacing (0.01); pcn: the loss's weight s (1); ep: nudge (1)")
    parser.add_argument("--activation", choices=["relu", "sigmoid"], default="relu",
                        help="pcn: hidden activation")
    parser.add_argument("--inference-steps", type=int, default=20,
                        help="pcn: inference steps; ep: free steps (both 20)")
    parser.add_argument("--inference-rate", type=float,
                        help="pcn: inference rate (0.1); ep: step epsilon (0.5)")
    parser.add_argument("--nudged-steps", type=int, default=4, help="ep: nudged steps")
    parser.add_argument("--ep-rates", default="0.2,0.1",
                        help="ep: SGD rate of each layer (the code's 0.1, 0.05 doubled)")
    args = parser.parse_args()
    layers, batch, lr, beta = defaults[args.method]
    args.layers = [int(n) for n in (args.layers or layers).split(",")]
    args.batch = args.batch or batch
    args.lr = args.lr if args.lr is not None else lr
    args.beta = args.beta if args.beta is not None else beta
    if args.inference_rate is None:
        args.inference_rate = 0.5 if args.method == "ep" else 0.1
    args.ep_rates = [float(r) for r in args.ep_rates.split(",")]

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images = read_idx(find(args.data, "train-images-idx3-ubyte"))[: args.samples]
    labels = read_idx(find(args.data, "train-labels-idx1-ubyte"))[: args.samples].long()
    x = images.reshape(len(images), -1).float() / 255

    train = {"bp": train_backprop, "fenbp": train_backprop, "pcn": train_pcn, "ep": train_ep,
             "lenet5": train_lenet5}
    result = train[args.method](args, x, labels)
    print(json.dumps({"framework": f"pytorch {torch.__version__}", "method": args.method,
                      "threads": args.threads, "batch": args.batch, "samples": len(x),
                      "seconds": result["seconds"], "samples_per_s": len(x) / result["seconds"],
                      "train_error": result["train_error"],
                      **({"loss": result["loss"]} if "loss" in result else {})}))


if __name__ == "__main__":
    main()
