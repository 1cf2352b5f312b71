#!/usr/bin/env bash
# Incremental developer build in its own folder: the library, the GoogleTest binary
# and the Python module, without pip. Then:
#   BUILD/mambatron_tests --gtest_filter='Norm*'
#   PYTHONPATH=BUILD/python python -m pytest tests/python/test_ops_norm.py
# Usage: scripts/dev_build.sh [BUILD_DIR] [extra cmake args...]   (default build/dev, CPU only)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/dev}
shift || true
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMAMBATRON_CUDA=OFF \
    -DMAMBATRON_BUILD_TESTS=ON -DMAMBATRON_BUILD_PYTHON=ON \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" "$@" >/dev/null
fi
ninja -C "$build" ${NINJA_JOBS:+-j "$NINJA_JOBS"}
# A package folder that imports the sources of python/mambatron and the fresh _C.
pkg="$build/python/mambatron"
mkdir -p "$pkg"
for f in python/mambatron/*; do ln -sfn "$PWD/$f" "$pkg/$(basename "$f")"; done
ln -sfn "$PWD/$(ls "$build"/_C*.so | head -1)" "$pkg/"
echo "built $build; Python: PYTHONPATH=$build/python"
