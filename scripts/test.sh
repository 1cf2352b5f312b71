#!/usr/bin/env bash
# Rebuilds mambatron (incrementally) with its tests, runs the GoogleTests and
# pytest, and prints their counts. Exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi

MAMBATRON_BUILD_TESTS=ON python3 -m pip install -q --no-build-isolation -C build-dir=build/pip . || exit 1

log=$(mktemp -d)
build/pip/mambatron_tests 2>&1 | tee "$log/gtest.txt" | grep -E '^\[  (FAILED|PASSED|SKIPPED) |^\[==========\]' 
gtest_rc=${PIPESTATUS[0]}
MAMBATRON_REQUIRE_CPP_PACKAGE=1 python3 -m pytest tests/python -q -rs "$@" 2>&1 | tee "$log/pytest.txt"
pytest_rc=${PIPESTATUS[0]}

g_total=$(grep -oE '^\[==========\] [0-9]+ tests? ' "$log/gtest.txt" | grep -oE '[0-9]+' | head -1)
g_pass=$(grep -oE '^\[  PASSED  \] [0-9]+' "$log/gtest.txt" | grep -oE '[0-9]+$' | head -1)
g_skip=$(grep -oE '^\[  SKIPPED \] [0-9]+ tests?,' "$log/gtest.txt" | grep -oE '[0-9]+' | head -1)
g_fail=$(grep -oE '^\[  FAILED  \] [0-9]+ tests?,' "$log/gtest.txt" | grep -oE '[0-9]+' | head -1)
echo
echo "GoogleTest: ${g_total:-0} run, ${g_pass:-0} passed, ${g_skip:-0} skipped, ${g_fail:-0} failed (exit $gtest_rc)"
echo "pytest:     $(tail -1 "$log/pytest.txt" | sed 's/=//g; s/^ *//') (exit $pytest_rc)"
[ "$gtest_rc" -eq 0 ] && [ "$pytest_rc" -eq 0 ]
