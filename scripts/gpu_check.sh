#!/usr/bin/env bash
# Everything that needs a GPU, in one run on the GPU machine: build the package
# with CUDA, run every C++ and Python test (GPU ones included), run the
# benchmarks. Logs and JSON go to $OUT (default ./gpu_out); the last lines
# printed are a summary.
#   scripts/gpu_check.sh            build + tests + benchmarks
#   scripts/gpu_check.sh --no-bench build + tests
#   scripts/gpu_check.sh --bench    build + benchmarks (a second call after the tests)
#   scripts/gpu_check.sh --jobs     build + the user-facing jobs on the GPU: the main job
#                                   (`mambatron train`, timed) and notebooks/paper_findings.ipynb
#                                   in its full setting (figure and numbers into $OUT)
#   scripts/gpu_check.sh --profile  build + Nsight Compute (ncu) over one forward+backward of
#                                   the SSD and the selective scan at their 8B shapes: each
#                                   kernel's throughput, occupancy and warp stalls, into
#                                   $OUT/ncu_<benchmark>.txt
# PROFILE=1 adds that profile after the tests and benchmarks of the same call (one build).
# SANITIZE=1 runs compute-sanitizer (memcheck, racecheck, synccheck, initcheck) over the
# small GoogleTest cases made for it (SANITIZE_FILTER to choose others) after the tests,
# each tool's report into $OUT/sanitize_<tool>.log (exit 124: the tool ran past 150 s).
# GTEST_FILTER and PYTEST_ARGS (e.g. "tests/python/test_ops_ssd.py -k cuda")
# narrow the tests to one area while a kernel is being written; BENCHMARKS (e.g.
# "bench_cuda_attention bench_cuda_ssd") the benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
bench=1 tests=1 jobs=0 profile=0
[ "${1:-}" = "--no-bench" ] && bench=0
[ "${1:-}" = "--bench" ] && tests=0
[ "${1:-}" = "--jobs" ] && bench=0 tests=0 jobs=1
[ "${1:-}" = "--profile" ] && bench=0 tests=0 profile=1
[ "${PROFILE:-0}" = 1 ] && profile=1
log="$OUT/gpu_check.log"
: > "$log"
say() { echo "$*" | tee -a "$log"; }
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) NCCL_NVLS_ENABLE=0
export PATH=/usr/local/cuda/bin:$PATH

# The commit under test: a COMMIT file (`git rev-parse --short HEAD > COMMIT`, carried to a
# machine whose copy of the tree has no history of its own), else git, which also says
# when the files differ from that commit.
commit() {
  if [ -f COMMIT ]; then cat COMMIT; return; fi
  local c
  c=$(git rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
  if git diff --quiet HEAD 2>/dev/null; then echo "$c"; else echo "$c with changes"; fi
}
say "== $(date -u +%FT%TZ) commit $(commit)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv >> "$log" 2>&1
# cuDNN (the attention engine): every libcudnn.so.9 on the machine with its version and
# the CUDA it was built for, and the one PyTorch loads.
python3 - >> "$log" 2>&1 <<'PY'
import ctypes, glob, site, sys
paths = set(glob.glob('/usr/lib/x86_64-linux-gnu/libcudnn.so.9') + glob.glob('/usr/local/cuda*/lib*/libcudnn.so.9'))
for d in site.getsitepackages() + sys.path:
    paths.update(glob.glob(f'{d}/nvidia/*/lib/libcudnn.so.9'))
for p in sorted(paths):
    try:
        h = ctypes.CDLL(p)
        print(f"libcudnn: {p}: {h.cudnnGetVersion()} for CUDA {h.cudnnGetCudartVersion()}")
    except OSError as e:
        print(f"libcudnn: {p}: {e}")
import torch
print(f"cuDNN through torch: {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}")
PY

# cudnn_frontend's headers (the cuDNN attention engine): a wheel carried in .deps/ when
# the machine cannot reach PyPI, fetched for its Python with
#   pip download --no-deps --only-binary :all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 nvidia-cudnn-frontend -d .deps
if compgen -G ".deps/nvidia_cudnn_frontend-*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps .deps/nvidia_cudnn_frontend-*.whl >> "$log" 2>&1 \
    || say "cudnn_frontend: the carried wheel did not install"
fi

t0=$(date +%s)
# The jobs and a profile alone need only the package; the tests' binary is built
# otherwise (also with --bench, so that a call after a test call on the same machine
# rebuilds nothing).
build_tests=ON
[ "${1:-}" = "--jobs" ] || [ "${1:-}" = "--profile" ] && build_tests=OFF
MAMBATRON_CUDA=ON MAMBATRON_BUILD_TESTS=$build_tests python3 -m pip install --no-build-isolation --no-deps -v \
  -C build-dir=build/gpu . > "$OUT/build.log" 2>&1
build_rc=$?
say "build: exit $build_rc in $(( $(date +%s) - t0 )) s"
if [ $build_rc -ne 0 ]; then tail -40 "$OUT/build.log"; exit 1; fi
grep -E "mambatron: (CUDA backend|cuDNN attention)" "$OUT/build.log" | tee -a "$log"
python3 -c "import mambatron as mt; print('cuDNN for attention (version, why not):', mt.cudnn_version(reason=True))" \
  2>&1 | tee -a "$log"

gtest_rc=0 pytest_rc=0
if [ $jobs -eq 1 ]; then
  job_rc=0
  t0=$(date +%s)
  (cd "$OUT" && python3 -m mambatron train) > "$OUT/main_job.log" 2>&1 || job_rc=1
  say "main job (mambatron train): exit $job_rc in $(( $(date +%s) - t0 )) s"
  tail -12 "$OUT/main_job.log" | tee -a "$log"
  t0=$(date +%s)
  MAMBATRON_PAPER_FIGURE="$OUT/paper_findings.png" MAMBATRON_PAPER_RESULTS="$OUT/paper_findings.json" \
    python3 scripts/run_notebook.py notebooks/paper_findings.ipynb > "$OUT/paper_findings.log" 2>&1 || job_rc=1
  say "paper_findings notebook: exit $job_rc in $(( $(date +%s) - t0 )) s"
  grep -A6 "^model " "$OUT/paper_findings.log" | tee -a "$log"
  tail -3 "$OUT/paper_findings.log" | tee -a "$log"
  exit $job_rc
fi

if [ $tests -eq 1 ]; then
  build/gpu/mambatron_tests --gtest_filter="${GTEST_FILTER:-*}" --gtest_output=xml:"$OUT/gtest.xml" > "$OUT/gtest.log" 2>&1
  gtest_rc=$?
  say "gtest: exit $gtest_rc; $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$OUT/gtest.log" | tr '\n' ' ')"
  grep -E '^\[  FAILED  \]|Failure|error' "$OUT/gtest.log" | head -30 | tee -a "$log"

  python3 -m pytest ${PYTEST_ARGS:-tests/python} -q -rs --durations=10 > "$OUT/pytest.log" 2>&1
  pytest_rc=$?
  say "pytest: exit $pytest_rc; $(tail -1 "$OUT/pytest.log")"
  [ $pytest_rc -ne 0 ] && grep -E "^(FAILED|ERROR)|Error" "$OUT/pytest.log" | head -30 | tee -a "$log"
  # The GPU-vs-CPU training curve's numbers (the test prints them).
  python3 -m pytest tests/python/test_train_gpu.py -q -s -k follows 2>&1 | grep "window means" | tee -a "$log"
fi

san_rc=0
if [ $tests -eq 1 ] && [ "${SANITIZE:-0}" = 1 ]; then
  san=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
  [ -z "$san" ] && { say "sanitize: compute-sanitizer not found"; san=false; }
  filter=${SANITIZE_FILTER:-CudaSsd.SmallPackedCase:CudaSsd.SmallTensorCoreCase:CudaSelectiveScan.SmallWalkedCase:CudaAttention.SmallPackedForwardBackward}
  for tool in memcheck racecheck synccheck initcheck; do
    t0=$(date +%s)
    timeout 150 "$san" --tool $tool --error-exitcode 9 build/gpu/mambatron_tests --gtest_filter="$filter" \
      > "$OUT/sanitize_$tool.log" 2>&1
    rc=$?
    say "sanitize $tool: exit $rc in $(( $(date +%s) - t0 )) s; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitize_$tool.log" | tail -1)"
    [ $rc -ne 0 ] && { grep -E '^=+ +(Invalid|Race|Barrier|Uninitialized|Error)' -A3 "$OUT/sanitize_$tool.log" | head -12 | tee -a "$log"; san_rc=1; }
  done
fi

bench_rc=0
if [ $bench -eq 1 ]; then
  # Every GPU benchmark: the gemm beside torch, each CUDA op family, whole-model training.
  # The SSM benchmarks also list each kernel's time (the profiler's), for the next change.
  for b in benchmarks/bench_gemm.py benchmarks/bench_cuda_*.py benchmarks/bench_train.py; do
    name=$(basename "$b" .py)
    [ -n "${BENCHMARKS:-}" ] && [[ " $BENCHMARKS " != *" $name "* ]] && continue
    extra=()
    case $name in bench_cuda_ssd | bench_cuda_selective_scan) extra=(--kernels) ;; esac
    python3 "$b" --json "$OUT/$name.json" "${extra[@]}" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    say "$name: exit $rc"
    [ $rc -ne 0 ] && bench_rc=1
  done
  # Activation recomputation: its peak memory and tokens/s beside the rows above.
  if [ -z "${BENCHMARKS:-}" ] || [[ " $BENCHMARKS " == *" bench_train "* ]]; then
    python3 benchmarks/bench_train.py --recompute --json "$OUT/bench_train_recompute.json" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    say "bench_train --recompute: exit $rc"
    [ $rc -ne 0 ] && bench_rc=1
  fi
fi
prof_rc=0
if [ $profile -eq 1 ]; then
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null)
  [ -z "$ncu" ] && { say "profile: ncu not found"; ncu=false; }
  for name in bench_cuda_ssd bench_cuda_selective_scan; do
    "$ncu" --profile-from-start off --section SpeedOfLight --section Occupancy --section LaunchStats \
      --section WarpStateStats --section SchedulerStats python3 "benchmarks/$name.py" --profile \
      > "$OUT/ncu_$name.txt" 2>&1
    rc=$?
    say "profile $name: exit $rc ($(grep -c '^  [a-z_].*(.*)x(.*)' "$OUT/ncu_$name.txt") kernels)"
    [ $rc -ne 0 ] && { tail -5 "$OUT/ncu_$name.txt" | tee -a "$log"; prof_rc=1; }
  done
fi
say "== summary: build $build_rc, gtest $gtest_rc, pytest $pytest_rc, sanitize $san_rc, benchmarks $bench_rc, profile $prof_rc"
[ $gtest_rc -eq 0 ] && [ $pytest_rc -eq 0 ] && [ $san_rc -eq 0 ] && [ $bench_rc -eq 0 ] && [ $prof_rc -eq 0 ]
