"""One training epoch of the Fenchel BP paper's MLP in PyTorch, timed like mnist_mlp times its own.

Run by scripts/compare-pytorch.sh with Debian's python3 and python3-torch. Prints one JSON line:
the epoch's training seconds (steps only: forward, loss, backward, Adam; the data is already a
float32 tensor in memory, shuffled per epoch) and the samples per second.

usage: compare_pytorch.py DATA_DIR [--samples N] [--batch B] [--threads T] [--method bp|fenbp]

--method fenbp runs Fenchel BP in PyTorch as a user would write it: a custom autograd function
per ReLU whose backward returns (f(a) - f(a - beta g)) / beta (docs/methods.md §5.2) instead of the
derivative; beta per sample, as in bilevel.
"""

import argparse
import gzip
import json
import os
import struct
import sys
import time

import torch


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--method", choices=["bp", "fenbp"], default="bp")
    parser.add_argument("--beta", type=float, default=0.01)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    images = read_idx(find(args.data, "train-images-idx3-ubyte"))[: args.samples]
    labels = read_idx(find(args.data, "train-labels-idx1-ubyte"))[: args.samples].long()
    x = images.reshape(len(images), -1).float() / 255

    sizes = [784, 256, 128, 64, 10]
    layers = torch.nn.ModuleList(torch.nn.Linear(sizes[k], sizes[k + 1]) for k in range(4))
    for layer in layers:  # Glorot uniform, biases 0, as mnist_mlp's default
        torch.nn.init.xavier_uniform_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    optimizer = torch.optim.Adam(layers.parameters(), lr=1e-3)
    loss_function = torch.nn.CrossEntropyLoss()

    def forward(batch):
        h = batch
        for k, layer in enumerate(layers):
            h = layer(h)
            if k + 1 < len(layers):
                h = FenchelReLU.apply(h, args.beta) if args.method == "fenbp" else torch.relu(h)
        return h

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
    print(json.dumps({"framework": f"pytorch {torch.__version__}", "method": args.method,
                      "threads": args.threads, "batch": args.batch, "samples": len(x),
                      "seconds": seconds, "samples_per_s": len(x) / seconds,
                      "train_error": 1 - correct / len(x)}))


if __name__ == "__main__":
    main()
