#!/usr/bin/env python3
"""Turns the JSON-lines runs of scripts/experiment-figure1.sh into a markdown table: per start,
method and beta, the mean +- sd over seeds of the test error after epochs 1, 5, 10, 20, 30, 40
and the last, the train error after the last, and for how many seeds the run escaped a stuck
start (test error below 50%) and after which epoch."""
import json
import pathlib
import statistics
import sys

ESCAPED = 0.5  # a stuck run answers one class: 88.65% or ~90% test error


def load(path):
    epochs, summary = [], None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("summary"):
            summary = record
        else:
            epochs.append(record)
    return epochs, summary


def spread(values):
    """mean +- sd (sample sd) of percentages; the mean alone for one seed."""
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(directory):
    groups = {}
    for path in sorted(pathlib.Path(directory).glob("*-seed*.jsonl")):
        epochs, summary = load(path)
        if not epochs or summary is None:
            continue
        key = (summary["init"], summary["method"], summary["beta"])
        groups.setdefault(key, []).append((summary["seed"], epochs))
    if not groups:
        sys.exit("summarize-figure1: no finished runs in " + str(directory))
    order = {"glorot": 0, "negative": 1, "all-negative": 2}
    keys = sorted(groups, key=lambda k: (order.get(k[0], 3), k[1] != "bp",
                                          float(k[2]) if k[2] is not None else 0.0))
    last = min(len(epochs) for runs in groups.values() for _, epochs in runs)
    marks = [e for e in (1, 5, 10, 20, 30, 40) if e < last] + [last]
    header = ["init", "method", "beta (per sample)", "seeds"]
    header += [f"test err. epoch {e} (%)" for e in marks]
    header += [f"train err. epoch {last} (%)", "escaped (seeds)", "escape epoch per seed"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for key in keys:
        runs = sorted(groups[key], key=lambda run: run[0])
        init, method, beta = key
        cells = [init, method, "-" if beta is None else f"{beta:g}", str(len(runs))]
        for e in marks:
            cells.append(spread([epochs[e - 1]["test_error"] for _, epochs in runs]))
        cells.append(spread([epochs[last - 1]["train_error"] for _, epochs in runs]))
        escapes = []
        for _, epochs in runs:
            below = [r["epoch"] for r in epochs[:last] if r["test_error"] < ESCAPED]
            escapes.append(str(below[0]) if below else "-")
        if init == "glorot":
            cells += ["", ""]
        else:
            cells += [f"{sum(e != '-' for e in escapes)}/{len(runs)}", ", ".join(escapes)]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/figure1")
