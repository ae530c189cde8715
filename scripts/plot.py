#!/usr/bin/env python3
"""Turns bilevel's outputs into PNG figures with gnuplot (Debian's gnuplot-nox).

  scripts/plot.py curves OUT.png RUN [RUN ...] [--title TEXT]
      Training curves: train (dashed) and test (solid) error per epoch of each run, one colour
      per run, on a log scale like Fig. 1 of the Fenchel BP paper, with whole epochs on the x
      axis. A run is either what mnist_mlp prints on stdout (one JSON object per epoch) or its
      --csv file (a .csv suffix, or a first line that is a CSV header naming `epoch`); the CSV
      needs the columns epoch, train_error and test_error, and an empty cell means "not
      measured". A run is labelled by its method and spacing ("fenbp β=0.01", per-layer
      spacings joined with ';', "bp" for methods without one); without a method (old files)
      the label is the file name without suffix. Runs that would share a label get their
      file name appended in parentheses.

  scripts/plot.py fidelity OUT.png GRADIENT_FIDELITY.csv [--title TEXT]
      The gradient-fidelity sweep of examples/gradient_fidelity: the worst layer's relative
      error of each method's gradient to BP's against its spacing, log-log, one line per method.

The figure is written atomically; the command fails with a one-line message on bad input.
For tests and debugging, --print-script writes the gnuplot script (data inline) to stdout
instead of running gnuplot; piped into gnuplot it writes OUT.png.
"""

import argparse
import collections
import csv
import json
import math
import os
import shutil
import subprocess
import sys


def fail(message):
    sys.exit(f"plot.py: {message}")


def quoted(text):
    """A gnuplot double-quoted string; a newline in a file name must not end the command."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def datablock(name, rows):
    """Data inline in the script, so --print-script's output runs on its own."""
    return "\n".join([f"${name} << EOD", *rows, "EOD"])


def number_text(value):
    """9 significant digits, as the trainer's CSV writes them, so JSON and CSV runs of one
    setting get the same label (0.01, not 0.01000000000000000021)."""
    return format(value, ".9g")


def spacing_text(beta):
    """A spacing from JSON (null, a number or a list of numbers) or from a CSV cell ("",
    "0.01" or "0.01;0.02") as label text; "" when the method has none."""
    if beta is None or beta == "":
        return ""
    parts = beta if isinstance(beta, list) else str(beta).split(";")
    texts = []
    for part in parts:
        try:
            texts.append(number_text(float(part)))
        except (TypeError, ValueError):
            texts.append(str(part).strip())  # only a label: show what the file says
    return ";".join(texts)


class Run:
    """One trainer run: the error per epoch (None where not measured), its method and spacing
    (None when the file does not say)."""

    def __init__(self, path):
        self.path = path
        self.method = None
        self.beta = None
        self.points = {}  # epoch -> (train error, test error)

    def add(self, epoch, train, test):
        # A resumed run appended to the same file repeats the epochs after its checkpoint; the
        # later line is the one that continued.
        self.points[epoch] = (train, test)

    def label(self):
        if not self.method:
            return os.path.splitext(os.path.basename(self.path))[0]
        return self.method + (f" β={self.beta}" if self.beta else "")


def error_value(value, where, name):
    """An error rate from a JSON value or a CSV cell; None when not measured."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        fail(f"{where}: {name} {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        fail(f"{where}: {name} {value!r} is not a number")
    return number if math.isfinite(number) else None


def epoch_value(value, where):
    try:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        fail(f"{where}: epoch {value!r} is not a whole number")


def is_csv(path, first_line):
    return path.lower().endswith(".csv") or "epoch" in [
        field.strip().strip('"') for field in first_line.split(",")]


def read_json_run(path, lines, run):
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            fail(f"{where}: not a JSON line ({error.msg})")
        if not isinstance(record, dict):
            fail(f"{where}: not a JSON object")
        if "epoch" not in record or record.get("summary"):
            continue
        missing = [key for key in ("train_error", "test_error") if key not in record]
        if missing:
            fail(f"{where}: no {' or '.join(missing)}")
        if run.method is None and record.get("method"):
            run.method = str(record["method"])
            if "beta" in record:  # absent in old files: unknown, not "no spacing"
                run.beta = spacing_text(record["beta"])
        run.add(epoch_value(record["epoch"], where),
                error_value(record["train_error"], where, "train_error"),
                error_value(record["test_error"], where, "test_error"))


def read_csv_run(path, lines, run):
    rows = csv.reader(lines)
    header = [name.strip() for name in next(rows, [])]
    missing = [name for name in ("epoch", "train_error", "test_error") if name not in header]
    if missing:
        fail(f"{path}: missing columns {', '.join(missing)}")
    column = {name: index for index, name in enumerate(header)}
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{rows.line_num}"
        if len(row) != len(header):  # e.g. a line cut short when the trainer was killed
            fail(f"{where}: {len(row)} fields, the header has {len(header)}")
        if run.method is None and "method" in column and row[column["method"]].strip():
            run.method = row[column["method"]].strip()
            if "beta" in column:  # older files have no beta column: unknown
                run.beta = spacing_text(row[column["beta"]])
        run.add(epoch_value(row[column["epoch"]], where),
                error_value(row[column["train_error"]], where, "train_error"),
                error_value(row[column["test_error"]], where, "test_error"))


def read_run(path):
    try:
        with open(path, encoding="utf-8", newline="") as source:
            lines = source.read().splitlines()
    except OSError as error:
        fail(f"cannot read {path}: {error.strerror}")
    except UnicodeDecodeError:
        fail(f"{path}: not UTF-8 text (expected mnist_mlp's JSON lines or --csv file)")
    run = Run(path)
    if is_csv(path, lines[0] if lines else ""):
        read_csv_run(path, lines, run)
    else:
        read_json_run(path, lines, run)
    if not run.points:
        fail(f"{path}: no epochs (expected mnist_mlp's JSON lines or --csv file)")
    if all(train is None and test is None for train, test in run.points.values()):
        fail(f"{path}: no measured train_error or test_error")
    return run


def distinct_labels(runs):
    """Each run's label, with the file name appended where runs would share one (the path
    where even the file names are the same, e.g. seed1/run.csv and seed2/run.csv)."""
    labels = [run.label() for run in runs]
    counts = collections.Counter(labels)
    names = collections.Counter((label, os.path.basename(run.path))
                                for label, run in zip(labels, runs))
    result = []
    for label, run in zip(labels, runs):
        if counts[label] > 1:
            name = os.path.basename(run.path)
            label += f" ({name if names[(label, name)] == 1 else run.path})"
        result.append(label)
    return result


def epoch_ticks(first, last):
    """Whole epochs only: every epoch up to 12 of them, else a whole step giving about 10."""
    step = 1 if last - first + 1 <= 12 else math.ceil((last - first) / 10)
    # A single epoch would be an empty range, which gnuplot widens to fractions of an epoch.
    low, high = (first - 1, last + 1) if first == last else (first, last)
    return [f"set xtics {step}", "set format x '%.0f'", f"set xrange [{low}:{high}]"]


def curves_script(runs, title):
    blocks, plots = [], []
    for index, (run, label) in enumerate(zip(runs, distinct_labels(runs))):
        rows = []
        for epoch, (train, test) in sorted(run.points.items()):
            # Zero error is clamped to 0.01% so that it stays on the log scale; NaN leaves an
            # unmeasured epoch out.
            rows.append("%d %s %s" % (epoch, *("NaN" if value is None else "%.6g" % max(value, 1e-4)
                                               for value in (train, test))))
        blocks.append(datablock(f"run{index}", rows))
        colour = index + 1
        plots.append(f"$run{index} using 1:(100*$3) with lines lw 2 lc {colour} "
                     f"title {quoted(label)} noenhanced")
        plots.append(f"$run{index} using 1:(100*$2) with lines lw 1 dt 2 lc {colour} notitle")
    epochs = [epoch for run in runs for epoch in run.points]
    return "\n".join([
        *blocks,
        "set xlabel 'epoch'",
        *epoch_ticks(min(epochs), max(epochs)),
        "set ylabel 'error (%), test solid, train dashed'",
        "set logscale y",
        "set grid",
        "set key outside right",
        f"set title {quoted(title)} noenhanced",
        "plot " + ", \\\n     ".join(plots),
    ])


def fidelity_script(path, title):
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
    except ValueError as error:  # includes UnicodeDecodeError
        fail(f"{path}: {error}")
    if not worst:
        fail(f"{path}: no rows with a spacing")
    series = {}
    for (label, value), error in worst.items():
        series.setdefault(label, []).append((value, error))
    blocks, plots = [], []
    for index, (label, points) in enumerate(sorted(series.items())):
        blocks.append(datablock(f"series{index}",
                                ["%.6g %.6g" % (value, error) for value, error in sorted(points)]))
        plots.append(f"$series{index} using 1:2 with linespoints lw 2 pt 7 "
                     f"lc {index + 1} title {quoted(label)} noenhanced")
    return "\n".join([
        *blocks,
        "set xlabel 'spacing: beta, 1/lambda, 1/mu or s (per sample)'",
        "set ylabel 'worst layer relative error'",
        "set logscale xy",
        "set format y '10^{%L}'",
        "set grid",
        "set key outside right",
        f"set title {quoted(title)} noenhanced",
        "plot " + ", \\\n     ".join(plots),
    ])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["curves", "fidelity"])
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("inputs", nargs="+",
                        help="trainer JSON lines or --csv files, or the fidelity CSV")
    parser.add_argument("--title", default="")
    parser.add_argument("--print-script", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind == "fidelity" and len(args.inputs) != 1:
        fail("fidelity takes exactly one CSV file")
    if not args.print_script and shutil.which("gnuplot") is None:
        fail("gnuplot is not installed (Debian: apt-get install gnuplot-nox)")

    if args.kind == "curves":
        body = curves_script([read_run(path) for path in args.inputs], args.title)
    else:
        body = fidelity_script(args.inputs[0], args.title)
    # UTF-8 so that labels such as "β=0.01" render; pngcairo draws them with its own fonts.
    header = "set encoding utf8\nset terminal pngcairo size 1000,600 font ',11'\n"
    output = os.path.abspath(args.output)
    if args.print_script:
        # UTF-8 whatever the locale: gnuplot reads the labels as UTF-8.
        sys.stdout.buffer.write(f"{header}set output {quoted(output)}\n{body}\n".encode())
        return

    # gnuplot writes a hidden file beside OUT.png, renamed only once it is complete, so a
    # failure never leaves a partial figure under the real name.
    directory, name = os.path.split(output)
    partial = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    if not os.path.isdir(directory):
        fail(f"cannot write {output}: no directory {directory}")
    script = f"{header}set output {quoted(partial)}\n{body}\n"
    # gnuplot writes the PNG to stdout when it cannot open the output file: discard it.
    result = subprocess.run(["gnuplot"], input=script, encoding="utf-8", errors="replace",
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if result.returncode != 0 or not os.path.exists(partial) or os.path.getsize(partial) == 0:
            message = result.stderr.strip().splitlines()
            fail("gnuplot failed" + (f": {message[-1].strip()}" if message else ""))
        os.replace(partial, output)
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror}")
    finally:
        if os.path.exists(partial):
            os.remove(partial)


if __name__ == "__main__":
    main()
