#!/usr/bin/env bash
# Runs benchmarks/data_parallel.cpp under mpirun on two processes and writes
# results/benchmark_mpi.json and the table results/benchmark_mpi.md: BP, Fenchel BP and AltMin
# steps on one process and on two (data-parallel, one thread each), the speedup, the share of a
# two-process step spent in MPI_Allreduce, and the bytes each step reduces. All numbers come
# from the same run. Needs a build with -DBILEVEL_WITH_MPI=ON (scripts/setup.sh); run it on an
# otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH_DATA_PARALLEL:-build/benchmarks/bench_data_parallel}
[ -x "$bench" ] || { echo "benchmark-mpi: build first (scripts/setup.sh): $bench missing" >&2; exit 1; }
launcher=(mpirun -np 2)
# Open MPI refuses root unless told (CI and containers run as root).
[ "$(id -u)" -ne 0 ] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p results
"${launcher[@]}" "$bench" --benchmark_format=json --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true >results/benchmark_mpi.json.tmp
mv results/benchmark_mpi.json.tmp results/benchmark_mpi.json
python3 - results/benchmark_mpi.json >results/benchmark_mpi.md.tmp <<'PY'
import json, sys
median = {}
for r in json.load(open(sys.argv[1]))["benchmarks"]:
    if r.get("aggregate_name") == "median":
        name, batch, processes = r["run_name"].split("/")[:3]
        median[(name, int(batch), int(processes))] = r

print("Data-parallel training steps (float, one thread per process, global batch split in two; "
      "1 process: the plain method):\n")
print("| step | global batch | 1 process (us) | 2 processes (us) | speedup | allreduce share | MB per step |")
print("|---|---|---|---|---|---|---|")
for (name, batch, processes), two in sorted(median.items()):
    if processes != 2:
        continue
    one = median[(name, batch, 1)]
    megabytes = two["parameters"] * 4 / 1e6
    print(f"| {name} | {batch} | {one['real_time']:.0f} | {two['real_time']:.0f} | "
          f"{one['real_time'] / two['real_time']:.2f} | {two['communication_share']:.2f} | "
          f"{megabytes:.2f} |")
PY
mv results/benchmark_mpi.md.tmp results/benchmark_mpi.md
cat results/benchmark_mpi.md
