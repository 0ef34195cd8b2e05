#!/usr/bin/env bash
# The train-step table (bench/trainstep_table.py) on one GPU, in one call of at most 6 minutes:
#
#   bash bench/gpu/trainstep.sh          # from the repo root; results land in $OUT
#
# Stages run in order of importance, each a process under `timeout` (a variant that hangs or
# a capture that breaks the CUDA context costs one stage, not the call), each capped by what
# is left of TRAINSTEP_BUDGET_S. Results are written variant by variant into
# bench/results/<device>.json (section trainstep_table) and copied to $OUT after every stage;
# $OUT/trainstep-table.md is the Markdown table for docs/training-speed.md. Merge the JSON
# with other calls' files: python bench/_results.py merge ...
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/gpu-out}"
DATA="${TRAINSTEP_DATA:-${TMPDIR:-/tmp}/hgan-trainstep-data}"
BUDGET="${TRAINSTEP_BUDGET_S:-340}"
PY=python3
LOG="$OUT/trainstep.txt"
mkdir -p "$OUT"
# $OUT holds only a few files (a remote runner may copy back no more than 8): the results files this call wrote (not the committed
# ones of other devices), the stage log outside it.
# beside this script's own file, wherever it is called from (a symlink too)
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/need_cuda.sh" || exit 2
need_cuda
STAMP=$(mktemp) STAGE=$(mktemp)
trap 'rm -f "$STAMP" "$STAGE"' EXIT
failed=0
save() { find bench/results -maxdepth 1 -name '*.json' -newer "$STAMP" -exec cp {} "$OUT"/ \; ; }

stage() {   # stage NAME LIMIT_S ARGS...: one process, at most LIMIT_S and what is left
  local name=$1 limit=$2
  shift 2
  local now=$SECONDS   # read once: the log line states the time the limit was computed from
  local left=$((BUDGET - now))
  if [ "$left" -lt 20 ]; then
    echo "== $name: skipped, ${left}s left of ${BUDGET}s" | tee -a "$LOG"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s, at ${now}s)" | tee -a "$LOG"
  timeout -k 5 "$limit" $PY bench/trainstep_table.py --data "$DATA" "$@" > "$STAGE" 2>&1
  local rc=$?
  cat "$STAGE" >> "$LOG"
  grep -iE "px: |compiled|error" "$STAGE" | tail -8
  echo "== $name: rc $rc at ${SECONDS}s" | tee -a "$LOG"
  [ "$rc" -ne 0 ] && failed=$((failed + 1))
  save
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  $PY -c "import sys; sys.path.insert(0, 'bench'); import _results; print('commit', _results.commit())"
} > "$OUT/versions.txt" 2>&1
cat "$OUT/versions.txt"

# Data files and the fused kernels (Triton's disk cache serves every later stage).
stage prep 120 --prep
# The target figures first: batch 16 x 16 frames, 32 px, captured step, then one change each.
stage capture-32 100 --resolution 32 --busy capture \
    --variants capture capture_bf16 capture_channels_last capture_fused_adam capture_torch_loader
stage eager-32 50 --resolution 32 --busy fused --variants baseline fused
stage capture-64 60 --resolution 64 --variants capture capture_bf16 capture_channels_last
stage eager-64 40 --resolution 64 --variants baseline fused
# 4 and 15 captured runs in one process, each on its own stream (hgan.train.pack, the grid's
# PACK=15): how far their kernels overlap.
stage pack-32 90 --resolution 32 --pack 4 15
# The same 15 with 32 hardware queues instead of the driver's 8: 15 streams on 8 queues can
# serialise kernels that have no dependency (4 runs: 2.19x one run alone, 15: only 2.61x).
stage pack-32-conn32 60 --resolution 32 --pack 15 --connections 32
# mocogan's captured step: the Table-1 grid's slowest runs (~22 it/s in the pack against ~44
# for hgan's), its per-frame GRU unroll about three times hgan's op count.
stage mocogan-32 80 --resolution 32 --variants capture_mocogan capture_mocogan_cells \
    capture_mocogan_bf16 --busy capture_mocogan capture_mocogan_cells
# torch.compile last: its compilation alone can take a minute per resolution.
stage compile-32 90 --resolution 32 --variants capture_compile
stage compile-64 90 --resolution 64 --variants capture_compile

$PY bench/trainstep_table.py --summary > "$OUT/trainstep-table.md" 2>&1
cat "$OUT/trainstep-table.md"
save
# A failed stage costs only itself, but the call says so: exit 1 when any stage failed.
if [ "$failed" -gt 0 ]; then
  echo "$failed stage(s) failed: see $LOG" >&2
  exit 1
fi
