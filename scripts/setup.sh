#!/usr/bin/env bash
# Installs what bilevel builds with, from Debian's archive only, and builds it in build/
# (Release). Extra arguments go to CMake's configure step, e.g. -DBILEVEL_NATIVE=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-numpy: tests/io_npy.cpp has NumPy load the .npy files the library writes.
packages=(cmake g++ make libeigen3-dev catch2 libbenchmark-dev zlib1g-dev libcli11-dev
          nlohmann-json3-dev python3 python3-numpy pkg-config gnuplot-nox dataset-fashion-mnist
          doxygen libopenmpi-dev openmpi-bin)
scripts/install-packages.sh "${packages[@]}"

# With MPI: the trainer runs data-parallel under mpirun, and its tests run (bilevel::mpi).
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DBILEVEL_WITH_MPI=ON "$@" >/dev/null
cmake --build build -j"$(nproc)"
