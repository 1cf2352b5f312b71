#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs, then mambatron itself:
# system packages (Eigen, GoogleTest, ninja, ccache), Python build tools and test
# packages (the lm-evaluation-harness among them), and `pip install` of this checkout
# (with CUDA when nvcc is found, and the C++ tests).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -f /usr/include/eigen3/Eigen/Core ] || need+=(libeigen3-dev)
[ -f /usr/include/gtest/gtest.h ] || need+=(libgtest-dev)
command -v ninja >/dev/null || need+=(ninja-build)
command -v ccache >/dev/null || need+=(ccache)
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# nvcc is often installed without being on PATH.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi

python3 -m pip install -q --upgrade "pip>=23" >/dev/null
python3 -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" "numpy>=1.24" "cmake>=3.24" \
  "pytest>=7" nbclient nbformat ipykernel safetensors tokenizers tqdm matplotlib \
  "lm_eval>=0.4.13"  # the harness for `lm_eval --model mambatron` and its test (no torch: about 2 min, 0.7 GB)
# cudnn_frontend's headers: a CUDA build then includes the cuDNN attention engine.
if command -v nvcc >/dev/null; then python3 -m pip install -q nvidia-cudnn-frontend; fi
echo "setup: building mambatron ($(command -v nvcc >/dev/null && echo 'CPU + CUDA' || echo 'CPU only'))"
MAMBATRON_BUILD_TESTS=ON python3 -m pip install -q --no-build-isolation -C build-dir=build/pip . \
  || { echo "setup: build failed; rerun with 'pip install -v --no-build-isolation .' to see why" >&2; exit 1; }
python3 -c "import mambatron as mt; print(f'setup: mambatron {mt.__version__} installed, CUDA built: {mt.built_with_cuda()}, CUDA devices: {mt.device_count()}')"
