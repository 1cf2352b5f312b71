#!/usr/bin/env bash
# The peer kernels that benchmarks/bench_peers_ssm.py times beside ours, built from their
# source in .peers/ (ignored by git: the peers are measured, never used by mambatron).
#
#   scripts/build_peers.sh --populate MAMBA_GIT CONV1D_GIT
#       fills .peers/ from a clone of state-spaces/mamba and one of Dao-AILab/causal-conv1d
#       (a checkout or a bare git directory; their HEAD), taking only the files the three
#       peer functions need, and records the two commits in .peers/SOURCES. No network.
#   scripts/build_peers.sh
#       on the GPU machine: builds mamba's selective-scan CUDA extension (selective_scan_cuda)
#       and causal-conv1d's (causal_conv1d_cuda) into .peers/build/ with PyTorch's
#       torch.utils.cpp_extension.load, both at once, while Triton compiles (and autotunes,
#       cached on disk with TRITON_CACHE_AUTOTUNING=1) mamba_chunk_scan_combined at the
#       benchmark's shapes; then imports all three. Exit 0 when all three import.
#
# The extensions are built for sm_90 and for the types the benchmark passes only: the scan
# with bf16 activations and real f32 A, the conv with bf16 activations and a bf16 weight.
# Their sources are copied to .peers/build/src/ and narrowed there: the explicit template
# instantiations of other types are dropped from the .cu files, and the type dispatch of
# their .cpp is pointed at macros of ours (peers_dispatch.h, below) that accept only those
# types and raise for any other. Compiler flags follow their setup.py. PEERS_BUILD_TIMEOUT
# (seconds, default 330) bounds the build, so that a slow one still leaves time to time ours.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=$ROOT/.peers

MAMBA_FILES=(
  LICENSE
  mamba_ssm/ops/__init__.py mamba_ssm/ops/selective_scan_interface.py
  mamba_ssm/ops/triton/__init__.py mamba_ssm/ops/triton/layer_norm.py mamba_ssm/ops/triton/layernorm_gated.py
  mamba_ssm/ops/triton/k_activations.py mamba_ssm/ops/triton/softplus.py mamba_ssm/ops/triton/ssd_bmm.py
  mamba_ssm/ops/triton/ssd_chunk_scan.py mamba_ssm/ops/triton/ssd_chunk_state.py
  mamba_ssm/ops/triton/ssd_state_passing.py mamba_ssm/ops/triton/ssd_combined.py
  mamba_ssm/utils/__init__.py mamba_ssm/utils/torch.py mamba_ssm/utils/determinism.py
  csrc/selective_scan/selective_scan.cpp csrc/selective_scan/selective_scan.h
  csrc/selective_scan/selective_scan_common.h csrc/selective_scan/static_switch.h
  csrc/selective_scan/uninitialized_copy.cuh csrc/selective_scan/reverse_scan.cuh
  csrc/selective_scan/selective_scan_fwd_kernel.cuh csrc/selective_scan/selective_scan_bwd_kernel.cuh
  csrc/selective_scan/selective_scan_fwd_bf16.cu csrc/selective_scan/selective_scan_bwd_bf16_real.cu
)
CONV_FILES=(
  LICENSE
  causal_conv1d/__init__.py causal_conv1d/causal_conv1d_interface.py causal_conv1d/cpp_functions.py
  csrc/causal_conv1d.cpp csrc/causal_conv1d.h csrc/causal_conv1d_common.h csrc/static_switch.h
  csrc/causal_conv1d_fwd.cu csrc/causal_conv1d_bwd.cu csrc/causal_conv1d_update.cu
)

die() { echo "build_peers: $*" >&2; exit 2; }

# git for a checkout or a bare git directory.
git_of() {
  if [ -d "$1/.git" ]; then echo "git -C $1"; elif [ -f "$1/HEAD" ]; then echo "git --git-dir=$1";
  else die "$1 is neither a git checkout nor a git directory"; fi
}

populate() {
  [ $# -eq 2 ] || die "usage: scripts/build_peers.sh --populate MAMBA_GIT CONV1D_GIT"
  local gm gc
  gm=$(git_of "$1"); gc=$(git_of "$2")
  rm -rf "$PEERS/mamba" "$PEERS/causal-conv1d"
  mkdir -p "$PEERS/mamba" "$PEERS/causal-conv1d"
  $gm archive HEAD -- "${MAMBA_FILES[@]}" | tar -x -C "$PEERS/mamba"
  $gc archive HEAD -- "${CONV_FILES[@]}" | tar -x -C "$PEERS/causal-conv1d"
  # Their package __init__ imports the whole model zoo; the benchmark needs only mamba_ssm.ops.
  echo '"""Package marker: only the ops that benchmarks/bench_peers_ssm.py imports are here."""' \
    > "$PEERS/mamba/mamba_ssm/__init__.py"
  {
    echo "state-spaces/mamba $($gm rev-parse HEAD) $($gm log -1 --format=%cs HEAD)"
    echo "Dao-AILab/causal-conv1d $($gc rev-parse HEAD) $($gc log -1 --format=%cs HEAD)"
  } > "$PEERS/SOURCES"
  grep -qx '/.peers/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.peers/' >> "$ROOT/.git/info/exclude"
  du -sh "$PEERS"
  cat "$PEERS/SOURCES"
}

if [ "${1:-}" = "--populate" ]; then shift; populate "$@"; exit 0; fi
[ $# -eq 0 ] || die "unknown argument $1 (usage: scripts/build_peers.sh [--populate MAMBA_GIT CONV1D_GIT])"

# ---------------------------------------------------------------- build
[ -d "$PEERS" ] || die ".peers/ is absent: fill it first with scripts/build_peers.sh --populate MAMBA_GIT CONV1D_GIT"
for f in "${MAMBA_FILES[@]}"; do [ -f "$PEERS/mamba/$f" ] || die ".peers/mamba/$f is missing (run --populate again)"; done
for f in "${CONV_FILES[@]}"; do [ -f "$PEERS/causal-conv1d/$f" ] || die ".peers/causal-conv1d/$f is missing (run --populate again)"; done
[ -f "$PEERS/mamba/mamba_ssm/__init__.py" ] || die ".peers/mamba/mamba_ssm/__init__.py is missing (run --populate again)"

export PATH=/usr/local/cuda/bin:$PATH CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=9.0 PYTHONUNBUFFERED=1 TRITON_CACHE_AUTOTUNING=1
command -v nvcc > /dev/null || die "nvcc not found (looked on PATH and in /usr/local/cuda/bin)"
python3 -c "import torch, triton" 2> /dev/null || die "python3 cannot import torch and triton"
TIMEOUT=${PEERS_BUILD_TIMEOUT:-330}
BUILD=$PEERS/build
SRC=$BUILD/src
rm -rf "$SRC"
mkdir -p "$SRC/selective_scan" "$SRC/causal_conv1d"
cp "$PEERS"/mamba/csrc/selective_scan/* "$SRC/selective_scan/"
cp "$PEERS"/causal-conv1d/csrc/* "$SRC/causal_conv1d/"

# Our dispatch: the one activation type and weight type compiled; anything else raises.
cat > "$SRC/peers_dispatch.h" << 'EOF'
// Type dispatch for the peers' extensions as scripts/build_peers.sh builds them (only
// the types the side-by-side benchmark passes are compiled). Forced into their .cpp.
#pragma once
#define PEERS_ONLY_TYPE(TYPE, WANT, ALIAS, CXX_TYPE, NAME, ...)                              \
  if ((TYPE) == at::ScalarType::WANT) {                                                      \
    using ALIAS = CXX_TYPE;                                                                  \
    __VA_ARGS__();                                                                           \
  } else {                                                                                   \
    TORCH_CHECK(false, NAME, ": this build takes " #WANT " only for " #ALIAS ", not ",        \
                toString(TYPE), " (scripts/build_peers.sh)");                                \
  }
#define PEERS_ITYPE_BF16(T, NAME, ...) PEERS_ONLY_TYPE(T, BFloat16, input_t, at::BFloat16, NAME, __VA_ARGS__)
#define PEERS_WTYPE_BF16(T, NAME, ...) PEERS_ONLY_TYPE(T, BFloat16, weight_t, at::BFloat16, NAME, __VA_ARGS__)
#define PEERS_WTYPE_F32(T, NAME, ...) PEERS_ONLY_TYPE(T, Float, weight_t, float, NAME, __VA_ARGS__)
EOF

# Point the .cpp's dispatch at ours (their #define lines stay, unused) and check that no
# use of theirs is left.
narrow_cpp() {
  sed -E -i \
    -e '/^[[:space:]]*#[[:space:]]*define/!s/DISPATCH_ITYPE_FLOAT_AND_HALF_AND_BF16\(/PEERS_ITYPE_BF16(/g' \
    -e "/^[[:space:]]*#[[:space:]]*define/!s/DISPATCH_WTYPE_FLOAT_AND_HALF_AND_BF16\(/$2(/g" \
    -e '/^[[:space:]]*#[[:space:]]*define/!s/DISPATCH_WTYPE_FLOAT_AND_COMPLEX\(/PEERS_WTYPE_F32(/g' "$1"
  if grep -v -E '^[[:space:]]*#[[:space:]]*define' "$1" | grep -q 'DISPATCH_[A-Z_]*('; then
    die "$1 uses a type dispatch this script does not know; compare it with its upstream"
  fi
  grep -q 'PEERS_ITYPE_BF16(' "$1" || die "$1: no type dispatch found to narrow"
}
# Keep, in a .cu file, only the explicit instantiations for the types given.
narrow_cu() {
  sed -E -i "/^template void [A-Za-z0-9_]+<.*>\(/{/<$2>\(/!d}" "$1"
  grep -q "^template void [A-Za-z0-9_]*<$2>(" "$1" || die "$1 has no instantiation for <$2>"
}
narrow_cpp "$SRC/selective_scan/selective_scan.cpp" PEERS_WTYPE_F32
narrow_cu "$SRC/selective_scan/selective_scan_fwd_bf16.cu" "at::BFloat16, float"
narrow_cu "$SRC/selective_scan/selective_scan_bwd_bf16_real.cu" "at::BFloat16, float"
narrow_cpp "$SRC/causal_conv1d/causal_conv1d.cpp" PEERS_WTYPE_BF16
for f in fwd bwd update; do narrow_cu "$SRC/causal_conv1d/causal_conv1d_$f.cu" "at::BFloat16, at::BFloat16"; done

# One extension: NAME SRCDIR FILES...; builds into $BUILD/NAME, then imports it.
build_ext() {
  local name=$1 dir=$2
  shift 2
  mkdir -p "$BUILD/$name"
  python3 - "$name" "$dir" "$SRC/peers_dispatch.h" "$BUILD/$name" "$@" << 'EOF'
import sys, time
import torch
from torch.utils.cpp_extension import load

name, src, dispatch_header, build_dir, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
nvcc = ["-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
        "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo",
        "-gencode", "arch=compute_90,code=sm_90"]
t0 = time.time()
module = load(name=name, sources=[f"{src}/{f}" for f in files], extra_include_paths=[src],
              extra_cflags=["-O3", "-include", dispatch_header], extra_cuda_cflags=nvcc,
              build_directory=build_dir, verbose=True)
print(f"{name}: built and imported in {time.time() - t0:.0f} s from {module.__file__}")
EOF
}

echo "build_peers: $(cat "$PEERS/SOURCES" 2>/dev/null | tr '\n' ';') nvcc $(nvcc --version | grep -o 'release [0-9.]*'),"\
  "torch $(python3 -c 'import torch; print(torch.__version__)'), MAX_JOBS $MAX_JOBS, limit $TIMEOUT s"
t0=$(date +%s)
export SRC BUILD
export -f build_ext die
timeout "$TIMEOUT" bash -c 'build_ext selective_scan_cuda "$SRC/selective_scan" selective_scan.cpp \
  selective_scan_fwd_bf16.cu selective_scan_bwd_bf16_real.cu' > "$BUILD/selective_scan_cuda.log" 2>&1 &
pid_scan=$!
timeout "$TIMEOUT" bash -c 'build_ext causal_conv1d_cuda "$SRC/causal_conv1d" causal_conv1d.cpp \
  causal_conv1d_fwd.cu causal_conv1d_bwd.cu causal_conv1d_update.cu' > "$BUILD/causal_conv1d_cuda.log" 2>&1 &
pid_conv=$!
timeout "$TIMEOUT" python3 "$ROOT/benchmarks/bench_peers_ssm.py" --warm-triton --peers "$PEERS" > "$BUILD/triton_warm.log" 2>&1 &
pid_warm=$!

rc=0
for job in "selective_scan_cuda $pid_scan" "causal_conv1d_cuda $pid_conv" "triton_warm $pid_warm"; do
  set -- $job
  if wait "$2"; then
    echo "build_peers: $1 done at $(( $(date +%s) - t0 )) s"
  else
    code=$?
    rc=1
    why="exit $code"; [ $code -eq 124 ] && why="stopped after ${TIMEOUT} s"
    echo "build_peers: $1 FAILED ($why); the end of .peers/build/$1.log:"
    tail -25 "$BUILD/$1.log"
  fi
done
echo "build_peers: $([ $rc -eq 0 ] && echo 'all three peers ready' || echo 'some peers are missing') in $(( $(date +%s) - t0 )) s"
exit $rc
