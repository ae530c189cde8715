#!/usr/bin/env python3
"""Turns the JSON-lines runs of scripts/experiment-figure1.sh into a markdown table:
train/test error after epoch 1, 5, 10, ... and at the end, per run."""
import json
import pathlib
import sys


def load(path):
    epochs, summary = [], None
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("summary"):
            summary = record
        else:
            epochs.append(record)
    return epochs, summary


def percent(value):
    return f"{100 * value:.2f}"


def main(directory):
    runs = sorted(pathlib.Path(directory).glob("*.jsonl"))
    order = {"glorot": 0, "negative": 1}
    rows = []
    for path in runs:
        epochs, summary = load(path)
        if not epochs or summary is None:
            continue
        beta = summary["beta"]
        rows.append((order.get(summary["init"], 2), summary["method"] != "bp",
                     float(beta) if beta is not None else 0.0, summary, epochs))
    rows.sort(key=lambda row: row[:3])
    if not rows:
        sys.exit("summarize-figure1: no finished runs in " + str(directory))
    last = max(len(row[4]) for row in rows)
    marks = [e for e in (1, 5, 10, 20, 30, 40) if e < last] + [last]
    header = ["init", "method", "beta (per sample)"]
    header += [f"test err. epoch {e} (%)" for e in marks]
    header += [f"train err. epoch {last} (%)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for _, _, _, summary, epochs in rows:
        cells = [summary["init"], summary["method"],
                 "-" if summary["beta"] is None else str(summary["beta"])]
        for e in marks:
            cells.append(percent(epochs[e - 1]["test_error"]) if e <= len(epochs) else "")
        cells.append(percent(epochs[-1]["train_error"]))
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/figure1")
