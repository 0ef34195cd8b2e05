#!/usr/bin/env bash
# The CUDA-marked tests (what no CPU can run), in at most ~135 s, log in $OUT/cuda-tests.txt.
#
#   bash bench/gpu/cuda_tests.sh          # from the repo root
#
# The capture tests run in a process of their own: on torch < 2.13 a capture that fails
# leaves the CUDA generators in capture mode (capture_end raises before it releases them),
# and every later random draw in that process fails with "Offset increment outside graph
# capture". Apart, one broken capture costs its own file, not the rest of the suite. The two
# processes run side by side: both are mostly Triton compiling on the host (16 cores), none
# of the tests times anything, and the time saved goes to the train-step table next.
# -v: each test's result is in the log as it finishes, so a file cut off by its timeout
# still says which tests passed.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
LOG="$OUT/cuda-tests.txt"
PY=python3
# beside this script's own file, wherever it is called from (a symlink too)
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/need_cuda.sh" || exit 2
need_cuda
CAPTURE=$(mktemp) OTHER=$(mktemp)   # outside $OUT: keep it to the few result files
{ echo "== tests/test_train_capture.py"
  timeout -k 5 130 python3 -m pytest -v -rfEs -m cuda tests/test_train_capture.py
  echo "== rc $?"
} > "$CAPTURE" 2>&1 &
{ echo "== the other cuda tests"
  timeout -k 5 130 python3 -m pytest -v -rfEs -m cuda tests --ignore=tests/test_train_capture.py
  echo "== rc $?"
} > "$OTHER" 2>&1
wait
cat "$CAPTURE" "$OTHER" | tee "$LOG"
rm -f "$CAPTURE" "$OTHER"
# a failed or cut-off test run fails the call (the log says which)
if grep -q "^== rc [1-9]" "$LOG"; then
  exit 1
fi
