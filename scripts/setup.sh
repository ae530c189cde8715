#!/usr/bin/env bash
# Installs what bilevel builds with, from Debian's archive only, and builds it in build/
# (Release). Extra arguments go to CMake's configure step, e.g. -DBILEVEL_NATIVE=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-numpy: tests/io_npy.cpp has NumPy load the .npy files the library writes;
# pybind11-dev, python3-dev, python3-pytest: the Python module and its tests.
packages=(cmake g++ make libeigen3-dev catch2 libbenchmark-dev zlib1g-dev libcli11-dev
          nlohmann-json3-dev python3 python3-numpy pkg-config gnuplot-nox dataset-fashion-mnist
          doxygen libopenmpi-dev openmpi-bin pybind11-dev python3-dev python3-pytest)
scripts/install-packages.sh "${packages[@]}"

# With MPI: the trainer runs data-parallel under mpirun, and its tests run (bilevel::mpi).
# With the Python module: built for /usr/bin/python3 and installed where it looks (sudo unless
# root), so that `import bilevel` works in a fresh shell.
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DBILEVEL_WITH_MPI=ON -DBILEVEL_PYTHON=ON "$@" \
  >/dev/null
cmake --build build -j"$(nproc)"
if grep -q '^BILEVEL_PYTHON:BOOL=ON' build/CMakeCache.txt; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" cmake --install build --component python >/dev/null
fi
