#!/usr/bin/env python3
"""Turns bilevel's outputs into PNG figures with gnuplot (Debian's gnuplot-nox).

  scripts/plot.py curves OUT.png RUN.jsonl [RUN.jsonl ...] [--title TEXT]
      Training curves: train (dashed) and test (solid) error per epoch of each run, one colour
      per run, on a log scale like Fig. 1 of the Fenchel BP paper. A run is what mnist_mlp
      prints on stdout (one JSON object per epoch); its label is the file name without suffix.

  scripts/plot.py fidelity OUT.png GRADIENT_FIDELITY.csv [--title TEXT]
      The gradient-fidelity sweep of examples/gradient_fidelity: the worst layer's relative
      error of each method's gradient to BP's against its spacing, log-log, one line per method.

The figure is written atomically; the command fails with a one-line message on bad input.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile


def fail(message):
    sys.exit(f"plot.py: {message}")


def quoted(text):
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_run(path):
    """(epochs, train errors, test errors) of one trainer run."""
    epochs, train, test = [], [], []
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    fail(f"{path}:{number}: not a JSON line ({error.msg})")
                if "epoch" not in record or record.get("summary"):
                    continue
                epochs.append(int(record["epoch"]))
                train.append(float(record["train_error"]))
                test.append(float(record["test_error"]))
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
    if not epochs:
        fail(f"{path}: no epoch lines (expected mnist_mlp's JSON output)")
    return epochs, train, test


def curves_script(runs, data_dir, title):
    plots = []
    for index, (label, (epochs, train, test)) in enumerate(runs):
        data = os.path.join(data_dir, f"run{index}.dat")
        with open(data, "w", encoding="utf-8") as out:
            for row in zip(epochs, train, test):
                out.write("%d %.6g %.6g\n" % (row[0], max(row[1], 1e-4), max(row[2], 1e-4)))
        colour = index + 1
        plots.append(f"{quoted(data)} using 1:(100*$3) with lines lw 2 lc {colour} "
                     f"title {quoted(label)}")
        plots.append(f"{quoted(data)} using 1:(100*$2) with lines lw 1 dt 2 lc {colour} notitle")
    return "\n".join([
        "set xlabel 'epoch'",
        "set ylabel 'error (%), test solid, train dashed'",
        "set logscale y",
        "set grid",
        "set key outside right",
        f"set title {quoted(title)}",
        "plot " + ", \\\n     ".join(plots),
    ])


def fidelity_script(path, data_dir, title):
    """The worst layer's relative error to BP (EP: to differences of its own objective) against
    the spacing, log-log, one line per method; rows without a spacing (Z-IL, AltMin) are left
    out."""
    worst = {}
    try:
        with open(path, newline="", encoding="utf-8") as rows:
            reader = csv.DictReader(rows)
            missing = {"method", "parameter", "value", "layer", "relative_error"} - set(
                reader.fieldnames or [])
            if missing:
                fail(f"{path}: missing columns {', '.join(sorted(missing))}")
            for row in reader:
                if row["parameter"] in ("", "-", "mu") or row["layer"] == "0":
                    continue
                key = (f"{row['method']} ({row['parameter']})", float(row["value"]))
                error = max(float(row["relative_error"]), 1e-17)  # exact rows stay on the plot
                worst[key] = max(worst.get(key, 0.0), error)
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
    except ValueError as error:
        fail(f"{path}: {error}")
    if not worst:
        fail(f"{path}: no rows with a spacing")
    series = {}
    for (label, value), error in worst.items():
        series.setdefault(label, []).append((value, error))
    plots = []
    for index, (label, points) in enumerate(sorted(series.items())):
        data = os.path.join(data_dir, f"series{index}.dat")
        with open(data, "w", encoding="utf-8") as out:
            for value, error in sorted(points):
                out.write("%.6g %.6g\n" % (value, error))
        plots.append(f"{quoted(data)} using 1:2 with linespoints lw 2 pt 7 "
                     f"lc {index + 1} title {quoted(label)}")
    return "\n".join([
        "set xlabel 'spacing: beta, 1/lambda, 1/mu or s (per sample)'",
        "set ylabel 'worst layer relative error'",
        "set logscale xy",
        "set format y '10^{%L}'",
        "set grid",
        "set key outside right",
        f"set title {quoted(title)}",
        "plot " + ", \\\n     ".join(plots),
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["curves", "fidelity"])
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("inputs", nargs="+", help="trainer JSON lines, or the fidelity CSV")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    if shutil.which("gnuplot") is None:
        fail("gnuplot is not installed (Debian: apt-get install gnuplot-nox)")
    if args.kind == "fidelity" and len(args.inputs) != 1:
        fail("fidelity takes exactly one CSV file")

    output = os.path.abspath(args.output)
    with tempfile.TemporaryDirectory() as data_dir:
        if args.kind == "curves":
            runs = [(os.path.splitext(os.path.basename(p))[0], read_run(p)) for p in args.inputs]
            body = curves_script(runs, data_dir, args.title)
        else:
            body = fidelity_script(args.inputs[0], data_dir, args.title)
        partial = os.path.join(os.path.dirname(output) or ".",
                               f".{os.path.basename(output)}.{os.getpid()}.tmp")
        script = f"set terminal pngcairo size 1000,600 font ',11'\nset output {quoted(partial)}\n"
        script += body + "\n"
        result = subprocess.run(["gnuplot"], input=script, text=True, capture_output=True)
        if result.returncode != 0 or not os.path.exists(partial) or os.path.getsize(partial) == 0:
            if os.path.exists(partial):
                os.remove(partial)
            message = result.stderr.strip().splitlines()
            fail("gnuplot failed" + (f": {message[-1]}" if message else ""))
        os.replace(partial, output)


if __name__ == "__main__":
    main()
