#!/usr/bin/env bash
# Every GPU step of this project in one script, for a lent GPU machine with no package index
# (torch, triton, h5py, scipy, pytest, pytest-benchmark preinstalled; run from the repo root).
#
#   bash bench/gpu/run.sh check     # versions, then the whole test suite on CUDA   (~3-5 min)
#   bash bench/gpu/run.sh tune      # fused BLOCK_B x num_warps sweep, checked      (~2 min)
#   bash bench/gpu/run.sh leapfrog  # pytest bench/test_bench_leapfrog.py           (~3 min)
#   bash bench/gpu/run.sh train     # pytest bench/test_bench_trainstep.py          (~5-8 min)
#
# Each stage fits one 10-minute call; everything it writes goes to $OUT (the device tool's
# return folder): logs, and bench/results/<device>.json as that call left it. Merge the
# per-call JSON files here with `python bench/_results.py merge $OUT1/*.json $OUT2/*.json`.
# DALI is not installed on those machines: carry it first with bench/gpu/carry_dali.sh,
# otherwise the optimised train step uses the torch loader (the results file says which).
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
PY=python3
stage="${1:?usage: bash bench/gpu/run.sh check|tune|leapfrog|train}"

status=0
save_results() { cp bench/results/*.json "$OUT"/ 2>/dev/null || true; }

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
    $PY -m pytest -q -p no:cacheprovider -rfEs tests 2>&1 | tee "$OUT/tests.txt" | tail -40
    status=${PIPESTATUS[0]}
    ;;
  tune)
    $PY bench/tune_fused.py 2>&1 | tee "$OUT/tune.txt" | tail -20
    status=${PIPESTATUS[0]}
    save_results
    ;;
  leapfrog)
    $PY -m pytest -q -p no:cacheprovider bench/test_bench_leapfrog.py --benchmark-only \
        2>&1 | tee "$OUT/bench-leapfrog.txt" | tail -30
    status=${PIPESTATUS[0]}
    save_results
    ;;
  train)
    $PY -m pytest -q -p no:cacheprovider bench/test_bench_trainstep.py --benchmark-only \
        2>&1 | tee "$OUT/bench-train.txt" | tail -30
    status=${PIPESTATUS[0]}
    save_results
    ;;
  *)
    echo "unknown stage '$stage': use check, tune, leapfrog or train" >&2
    exit 2
    ;;
esac
exit "$status"
