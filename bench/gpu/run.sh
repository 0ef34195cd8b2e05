#!/usr/bin/env bash
# Every GPU step of this project in one script, for a GPU machine with no package index
# (torch, triton, h5py, scipy, pytest, pytest-benchmark preinstalled; run from the repo root).
#
#   bash bench/gpu/run.sh check     # versions, then the whole test suite on CUDA   (~4-6 min)
#   bash bench/gpu/run.sh tune      # fused layout x BLOCK_B x warps x precision    (~6-9 min)
#   bash bench/gpu/run.sh leapfrog  # bench/test_bench_leapfrog.py + _dv_layout.py  (~4 min)
#   bash bench/gpu/run.sh train     # pytest bench/test_bench_trainstep.py          (~5-8 min)
#
# Each stage fits one 10-minute command; everything it writes goes to $OUT (the folder
# copied back): logs, and bench/results/<device>.json as that call left it. Merge the
# per-call JSON files here with `python bench/_results.py merge $OUT1/*.json $OUT2/*.json`.
# DALI is not installed on those machines: carry it first with bench/gpu/carry_dali.sh,
# otherwise the optimised train step uses the torch loader (the results file says which).
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
PY=python3
if [ $# -lt 1 ]; then
  echo "usage: bash bench/gpu/run.sh check|tune|leapfrog|train [extra args]" >&2
  exit 2
fi
stage=$1
shift
case "$stage" in
  check|tune|leapfrog|train) ;;
  *) echo "unknown stage '$stage': use check, tune, leapfrog or train" >&2; exit 2 ;;
esac
# beside this script's own file, wherever it is called from (a symlink too)
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/need_cuda.sh" || exit 2
need_cuda
# Extra arguments go to that stage's pytest (e.g. train -k 32px, to split a stage over two
# calls) or to tune_fused.py (e.g. tune --blocks 16 32).

status=0
# Only the results files this call wrote: the committed ones of other devices (cpu-*.json,
# ptxas-sm_90.json) would take slots of the 8 files and make the merge below refuse the lot
# ("one device per results file").
STAMP=$(mktemp)
trap 'rm -f "$STAMP"' EXIT
save_results() { find bench/results -maxdepth 1 -name '*.json' -newer "$STAMP" -exec cp {} "$OUT"/ \; ; }
# A command is killed at 600 s on the runners this was written for, and then nothing after it runs (save_results
# included): stop each stage's main command earlier so that what it measured still comes back.
# STAGE_LIMIT_S counts from the start of this script (bash's SECONDS).
LIMIT="${STAGE_LIMIT_S:-540}"
limited() {
  local left=$((LIMIT - SECONDS))
  [ "$left" -lt 30 ] && left=30
  timeout -k 15 "$left" "$@"
}
# The Triton kernel tests compile ~25 fused kernels; at width 128 one backward takes about a
# minute of single-threaded ptxas (triton 3.6, sm_90). Run those tests first one per process,
# in parallel, only to fill Triton's on-disk cache; the suite below then reports them.
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 8)}"
[ "$JOBS" -gt 16 ] && JOBS=16
warm_fused_cache() {
  $PY -m pytest -q -p no:cacheprovider --collect-only tests/test_leapfrog_fused.py \
      tests/test_bench_tools.py tests/test_hamiltonian_invariants.py 2>/dev/null \
    | grep '::' | grep -E 'fused|tuning' > "$OUT/warm-nodes.txt"
  timeout -k 10 300 xargs -d '\n' -P "$JOBS" -n 1 \
      timeout 240 $PY -m pytest -q -p no:cacheprovider \
      < "$OUT/warm-nodes.txt" > "$OUT/warm.txt" 2>&1
  echo "warm-up: $(wc -l < "$OUT/warm-nodes.txt") test nodes in $SECONDS s"
}

case "$stage" in
  check)
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
    $PY - <<'PYEOF' 2>&1 | tee "$OUT/versions.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0))
try:
    import nvidia.dali as d; print("dali", d.__version__)
except ImportError:
    print("dali not installed")
PYEOF
    warm_fused_cache
    limited $PY -m pytest -q -p no:cacheprovider -rfEs tests "$@" 2>&1 | tee "$OUT/tests.txt" \
        | tail -40
    status=${PIPESTATUS[0]}
    ;;
  tune)
    limited $PY bench/tune_fused.py "$@" 2>&1 | tee "$OUT/tune.txt" | tail -20
    status=${PIPESTATUS[0]}
    save_results
    ;;
  leapfrog)
    limited $PY -m pytest -q -p no:cacheprovider bench/test_bench_leapfrog.py \
        bench/test_bench_dv_layout.py --benchmark-only "$@" 2>&1 \
        | tee "$OUT/bench-leapfrog.txt" | tail -30
    status=${PIPESTATUS[0]}
    save_results
    ;;
  train)
    limited $PY -m pytest -q -p no:cacheprovider bench/test_bench_trainstep.py --benchmark-only \
        "$@" 2>&1 | tee "$OUT/bench-train.txt" | tail -30
    status=${PIPESTATUS[0]}
    save_results
    ;;
esac
exit "$status"
