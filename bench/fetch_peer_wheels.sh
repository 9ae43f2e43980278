#!/usr/bin/env bash
# The peers the GPU benchmarks compare against (POT, GeomLoss), as wheels for the GPU machine's
# Python (3.12, x86-64; override with PY_VERSION), downloaded where pip reaches PyPI into
# bench/wheels/ (git-ignored). The GPU machine has no index: bench/gpu_lease.py installs what
# lies there into a temporary directory (its peers stage). With the device tool,
# pass carry ["bench/wheels"] (about 33 MB, within a call's 64 MiB).
#   bash bench/fetch_peer_wheels.sh
set -euo pipefail
cd "$(dirname "$0")"
PY_VERSION="${PY_VERSION:-3.12}"
mkdir -p wheels
# POT has compiled parts: a wheel for the target's Python and platform (its numpy / scipy are on the
# GPU machine already). GeomLoss is pure Python.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d wheels pot==0.9.7.post1
python3 -m pip download -q --no-deps --only-binary=:all: -d wheels geomloss==0.3.1
ls -l wheels
