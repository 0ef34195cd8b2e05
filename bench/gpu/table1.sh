#!/usr/bin/env bash
# The paper's Table 1 on one GPU in one call: generate the five systems' data, train
# 3 models x 5 systems at once (15 processes on the GPU), evaluate every run, time one
# evaluation alone, and pack docs/results/table1/ for the repository.
#
#   HGAN_COMMIT=<short sha> PACK=15 bash bench/gpu/table1.sh   # ~9.5 minutes
#
# (run from the repository root; HGAN_COMMIT names the commit where the copied tree has no .git:
# a literal, since a $(git ...) would run where there is no git)
#
# Every stage is bounded so that the results come back inside a 600 s limit per command:
# training stops at TRAIN_S seconds after the grid starts (each run checkpoints; compare.md
# states the iterations each run reached), the grid command itself at LIMIT_S minus a margin.
# What comes back under $OUT (at most 8 files):
#   nvidia-smi.txt, versions.txt  the machine (and whether MPS / PACK ran)
#   pack-check.txt                with PACK > 1: the packed-capture test run before the grid
#   grid.log                      the grid's status lines (runs, it/s, failures)
#   eval-one.log                  one full evaluation alone (probe trained from scratch), timed
#   compare.md                    the table and checks
#   table1.tar.gz                 docs/results/table1/ (compare.md, figures, each run's config,
#                                 summary, experiment.json and evaluation; no checkpoints):
#                                 unpack here with `tar xzf table1.tar.gz -C docs/results`
#   logs.tar.gz                   every run's train.log and eval.log, and dmon.txt: the card's
#                                 power, temperature, clocks and throttling every 10 s
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
PY=python3
LIMIT="${LIMIT_S:-570}"          # the whole script (bash's SECONDS)
TRAIN_S="${TRAIN_S:-240}"        # training deadline from the grid's start, less the pack check and data
ITERS="${ITERS:-20000}"          # every run's target; runs still short at TRAIN_S stop there
PARALLEL="${PARALLEL:-15}"       # 3 models x 5 systems at once; evaluations take slots too
# PACK=15: the 15 training runs in one process, each in a thread with its own CUDA stream
# (hgan.train.pack), so their kernels overlap without MPS. Checked first on this GPU by the
# packed-capture test (~1-2 min, mostly Triton compiling kernels for the test's own small
# shapes); if it fails, the grid runs one process per run (PACK=1).
PACK="${PACK:-1}"
SYSTEMS="${SYSTEMS:-mass_spring,pendulum,double_pendulum,two_body,three_body}"
MODELS="${MODELS:-hgan,hnn_gan,mocogan}"
SCRATCH="${TMPDIR:-/tmp}"       # the kernel warm-up's and the lone evaluation's own files
GRID="${GRID_DIR:-$SCRATCH/table1}"
# The dataset sits in GPU memory in each process (1,000 x 128 frames at 32 px: 0.4 GB), so
# 15 runs need no loader workers; samples and checkpoints rarely, to keep the CPU for steps.
TRAIN_ARGS="${TRAIN_ARGS:---loader gpu-resident --log-every 100 --sample-every 5000 --ckpt-every 1000}"
DEST="${DEST:-docs/results/table1}"
DEST="${DEST%/}"                 # the export is made beside it, never inside it
DEVICE="${DEVICE:-cuda}"
# Smoke-testing this script on a CPU: DEVICE=cpu and tiny GRID_ARGS / EVAL_ARGS / TRAIN_ARGS.
GRID_ARGS="${GRID_ARGS:-}"       # e.g. data sizes: --train-traj 1000 --traj-frames 128
EVAL_ARGS="${EVAL_ARGS:-}"       # extra hgan.evaluate flags for every run
# MPS=1: the processes under an MPS daemon (below)
# Split over two calls on one warm machine (the grid then gets a call of its own):
# PREP_ONLY=1 generates the data, trains the physics probes and compiles the kernels
# (hgan's and mocogan's), then stops; the next call, with WARM=0, finds both (in $GRID and Triton's cache) and spends its
# seconds on the grid. PACK_CHECK=0 skips
# the packed-capture test (where it has passed on this GPU before); EVAL_ONE=0 skips the
# lone evaluation and keeps 30 s instead of 120 after the grid, for the packing (6 s on
# the H200 for the 20,000-iteration grid; 40 s cut that grid off as it wrote its table).
PREP_ONLY="${PREP_ONLY:-0}" PACK_CHECK="${PACK_CHECK:-1}" EVAL_ONE="${EVAL_ONE:-1}"

# beside this script's own file, wherever it is called from (a symlink too)
. "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/need_cuda.sh" || exit 2
[ "$DEVICE" = cpu ] || need_cuda

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY - > "$OUT/versions.txt" 2>&1 <<'PYEOF'
import os, subprocess, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
print("cpus", os.cpu_count())
print("commit", os.environ.get("HGAN_COMMIT") or subprocess.run(
    ["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    or "unknown (no git here)")
PYEOF

# On the way out, whatever ends the script: stop the card's monitor and the MPS daemon.
MPS_ON=0 DMON_PID=
finish() {
  [ -n "$DMON_PID" ] && kill "$DMON_PID" 2> /dev/null
  [ "$MPS_ON" = 1 ] && echo quit | nvidia-cuda-mps-control
}
trap finish EXIT

# The card's power, temperature, utilisation, clocks and power/thermal violations every 10 s
# from here to the end (`nvidia-smi dmon`, which only reads), into logs.tar.gz: 15 runs at
# once may hold the card at its power cap, and the iterations each run reached would then
# say so only through this.
DMON="$SCRATCH/table1-dmon.txt"
if [ "$DEVICE" != cpu ] && command -v nvidia-smi > /dev/null; then
  nvidia-smi dmon -s pucv -d 10 -o T > "$DMON" 2>&1 &
  DMON_PID=$!
fi

# MPS=1: run the grid's processes under an MPS daemon, so that the kernels of different
# runs share the SMs at once instead of taking turns (docs/experiments.md: without it 15
# captured runs share one run's iterations/s). Opt-in and not yet tried on a GPU: if the
# daemon does not start or a CUDA client cannot run under it, the grid runs without it.
if [ "${MPS:-0}" = 1 ]; then
  if command -v nvidia-cuda-mps-control > /dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY="$SCRATCH/hgan-mps/pipe" CUDA_MPS_LOG_DIRECTORY="$SCRATCH/hgan-mps/log"
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    if nvidia-cuda-mps-control -d && timeout 60 $PY -c \
        "import torch; assert torch.ones(4, device='cuda').sum().item() == 4"; then
      MPS_ON=1   # quit by finish
      echo "MPS: on" | tee -a "$OUT/versions.txt"
    else
      echo quit | nvidia-cuda-mps-control 2> /dev/null
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
      echo "MPS: asked for, but a CUDA client failed under it; running without" | tee -a "$OUT/versions.txt"
    fi
  else
    echo "MPS: asked for, but nvidia-cuda-mps-control is not here; running without" | tee -a "$OUT/versions.txt"
  fi
fi

t_pre=$SECONDS  # what runs before the grid (pack check, data) comes out of TRAIN_S
if [ "$PACK" -gt 1 ] && [ "$DEVICE" != cpu ] && [ "$PACK_CHECK" = 0 ]; then
  echo "pack: $PACK training runs per process (packed-capture test skipped: PACK_CHECK=0)" | tee -a "$OUT/versions.txt"
elif [ "$PACK" -gt 1 ] && [ "$DEVICE" != cpu ] && [ "$PREP_ONLY" != 1 ]; then
  # On a fresh machine most of this is Triton compiling the fused kernels at the test's
  # shapes (batch 4, 6 frames: other specialisations than the grid's).
  if timeout -k 5 150 $PY -m pytest -q -m cuda tests/test_train_capture.py -k packed \
      > "$OUT/pack-check.txt" 2>&1; then
    echo "pack: $PACK training runs per process (packed-capture test passed in $SECONDS s)" | tee -a "$OUT/versions.txt"
  else
    echo "pack: asked for $PACK, but the packed-capture test failed (pack-check.txt); one process per run" | tee -a "$OUT/versions.txt"
    tail -5 "$OUT/pack-check.txt" >> "$OUT/versions.txt"
    PACK=1
  fi
fi

# The datasets first, so that the training deadline counts training (a pack under a deadline
# starts with the runs whose data is ready); TRAIN_S is shortened by what they took. With
# PREP_ONLY=1 each system's physics probe too, for the grid's evaluation settings (--probes):
# the grid's evaluations then start together instead of each system's first training it.
probes=()
[ "$PREP_ONLY" = 1 ] && probes=(--probes --eval-args "$EVAL_ARGS")
limit=$((LIMIT - SECONDS - 300))
[ "$limit" -lt 30 ] && limit=30
timeout -s INT -k 30 "$limit" $PY -m hgan.experiments table1 --out "$GRID" \
    --systems "$SYSTEMS" --models "$MODELS" --iters "$ITERS" --device "$DEVICE" --data-only \
    ${probes[@]+"${probes[@]}"} --parallel "$PARALLEL" --no-progress $GRID_ARGS 2>&1 \
    | tee "$OUT/grid.log"
data_status=${PIPESTATUS[0]}

# Two iterations of one HNN run at the grid's shapes, so that Triton compiles the fused
# integrator for them (its disk cache) before the training clock starts: compiled inside
# the grid, the first run would compile while holding the pack's capture lock (about a
# minute of ptxas on a fresh machine), and 15 separate processes would all compile at once.
# Its own small dataset, never the grid's (a dataset of other sizes there would stop the
# grid); the grid's batch, frames and resolution, which the kernels are compiled for.
shape=() frames=()  # the grid's shape flags in GRID_ARGS; its --frames also for eval-one below
set -- $GRID_ARGS
while [ $# -gt 0 ]; do
  case "$1" in
    --batch-size|--frames|--resolution)
      shape+=("$1" "${2:-}"); [ "$1" = --frames ] && frames=("$1" "${2:-}"); shift 2 || shift ;;
    --batch-size=*|--frames=*|--resolution=*)
      shape+=("$1"); case "$1" in --frames=*) frames=("$1") ;; esac; shift ;;
    *) shift ;;
  esac
done
warm=$((LIMIT - SECONDS - 300))  # at most 150 s, and only where the budget leaves room
[ "$warm" -gt 150 ] && warm=150
# Which models' kernels to compile: hgan's fused integrator (hnn_gan runs the same kernels);
# with PREP_ONLY=1 also mocogan's GRU kernels (hgan.kernels.gru, a few seconds), where the
# grid has mocogan. WARM=0: none (the grid call after a PREP_ONLY call, whose compiled
# kernels are in Triton's cache already).
warm_models=hgan
[ "$PREP_ONLY" = 1 ] && case ",$MODELS," in *,mocogan,*) warm_models="hgan mocogan" ;; esac
if [ "${WARM:-1}" = 0 ]; then
  echo "kernel warm-up skipped: WARM=0" | tee -a "$OUT/grid.log"
elif [ "$DEVICE" != cpu ] && [ "$warm" -lt 30 ]; then
  echo "kernel warm-up skipped: LIMIT_S $LIMIT leaves no room for it" | tee -a "$OUT/grid.log"
elif [ "$DEVICE" != cpu ]; then
  t_warm=$SECONDS     # the models' warm-ups share the one budget
  for model in $warm_models; do
    dir="$SCRATCH"/hgan-warm; [ "$model" = hgan ] || dir="$dir-$model"
    rm -rf "$dir"
    # the model's share of TRAIN_ARGS, as the grid gives it (train.py refuses another model's
    # flag, such as mocogan's --gru-input, and the warm-up would then compile nothing)
    filter="import sys; from hgan.experiments.grid import model_args as m; print(*m('$model', sys.argv[1:]))"
    warm_args=$($PY -c "$filter" $TRAIN_ARGS 2>> "$dir.log") || warm_args=$TRAIN_ARGS
    left_warm=$((warm - (SECONDS - t_warm)))
    [ "$left_warm" -lt 10 ] && left_warm=10
    timeout -k 5 "$left_warm" $PY train.py --system "${SYSTEMS%%,*}" --model "$model" --iters 2 \
        --device "$DEVICE" --data "$dir"/data --gen-train 32 --gen-test 8 --out "$dir"/run \
        --no-progress ${shape[@]+"${shape[@]}"} $warm_args >> "$dir.log" 2>&1
    echo "kernel warm-up (train.py --model $model, 2 iterations at the grid's shapes): exit $? at $SECONDS s" \
        | tee -a "$OUT/grid.log"
  done
fi
if [ "$PREP_ONLY" = 1 ]; then
  echo "prep only (PREP_ONLY=1): data and kernels ready after $SECONDS s" | tee -a "$OUT/grid.log"
  exit "$data_status"
fi
TRAIN_S=$((TRAIN_S - (SECONDS - t_pre)))
[ "$TRAIN_S" -lt 60 ] && TRAIN_S=60
echo "data step exit status $data_status after $SECONDS s; training deadline $TRAIN_S s" | tee -a "$OUT/grid.log"

reserve=120; [ "$EVAL_ONE" = 0 ] && reserve=30
left=$((LIMIT - SECONDS - reserve))  # keep time for the lone evaluation and the packing
[ "$left" -lt 30 ] && left=30    # (timeout 0 would mean no limit at all)
timeout -s INT -k 45 "$left" $PY -m hgan.experiments table1 --out "$GRID" \
    --systems "$SYSTEMS" --models "$MODELS" --iters "$ITERS" --parallel "$PARALLEL" \
    --device "$DEVICE" --deadline "$TRAIN_S" --status-every 20 --no-progress --pack "$PACK" \
    --train-args "$TRAIN_ARGS" --eval-args "$EVAL_ARGS" $GRID_ARGS 2>&1 | tee -a "$OUT/grid.log"
status=${PIPESTATUS[0]}
echo "grid exit status $status after $SECONDS s" | tee -a "$OUT/grid.log"
# A grid killed by timeout's -k leaves its jobs behind (each in a session of its own); every
# one of them names $GRID on its command line. They would share the GPU with the timing below.
if pgrep -f -- "$GRID/" > /dev/null; then
  echo "stopping the grid's leftover jobs" | tee -a "$OUT/grid.log"
  pkill -TERM -f -- "$GRID/"
  for _ in $(seq 20); do pgrep -f -- "$GRID/" > /dev/null || break; sleep 1; done
  pkill -KILL -f -- "$GRID/"
fi

# One full evaluation alone, the physics probe trained from scratch (a fresh copy of the
# data has no cached probe): the "under a minute on a GPU" target.
one="$GRID/runs/pendulum-hgan-s0"
if [ "$EVAL_ONE" != 0 ] && [ -f "$one/checkpoints/last.pt" ] && [ $((LIMIT - SECONDS)) -gt 100 ]; then
  rm -rf "$SCRATCH"/eval-one && mkdir -p "$SCRATCH"/eval-one/data && cp "$GRID"/data/pendulum/{train,test}.h5 "$SCRATCH"/eval-one/data/
  t0=$(date +%s%N)
  timeout 90 $PY -m hgan.evaluate --checkpoint "$one/checkpoints/last.pt" --out "$SCRATCH"/eval-one/out \
      --data "$SCRATCH"/eval-one/data/train.h5 --device "$DEVICE" ${frames[@]+"${frames[@]}"} \
      --metrics physics,appearance,cyclic,samples,tsne $EVAL_ARGS > "$OUT/eval-one.log" 2>&1
  rc=$?
  echo "evaluation of $one alone (probe trained from scratch): exit $rc," \
       "$(( ($(date +%s%N) - t0) / 1000000 )) ms wall" | tee -a "$OUT/eval-one.log"
fi

# A grid killed before it wrote its table (timeout's -k): write it from what is on disk.
[ -f "$GRID/compare.md" ] || $PY -m hgan.experiments table1 --out "$GRID" --systems "$SYSTEMS" \
    --models "$MODELS" --iters "$ITERS" --device "$DEVICE" $GRID_ARGS --report-only > /dev/null 2>&1
# Exported into a folder of its own and packed from there; it replaces $DEST only when the
# grid itself ended well (a grid cut short still writes a compare.md, from --report-only, and
# its tarball still comes back): a failed grid must not take the committed results with it.
cp "$GRID/compare.md" "$OUT/compare.md" 2>/dev/null
EXPORT=$(mktemp -d)
if $PY -m hgan.experiments export "$GRID" --to "$EXPORT/table1"; then
  cp "$OUT/versions.txt" "$EXPORT/table1/versions.txt"
  [ -f "$OUT/eval-one.log" ] && tail -1 "$OUT/eval-one.log" > "$EXPORT/table1/eval-one.txt"
  tar czf "$OUT/table1.tar.gz" -C "$EXPORT" table1
  if [ "$status" -eq 0 ]; then
    rm -rf "$DEST" && mkdir -p "$(dirname "$DEST")" && cp -r "$EXPORT/table1" "$DEST"
  else
    echo "grid exit status $status: $DEST kept as it was (this grid's export: table1.tar.gz)" \
        | tee -a "$OUT/grid.log"
  fi
else
  echo "export of $GRID failed: $DEST kept as it was, no table1.tar.gz" | tee -a "$OUT/grid.log"
  [ "$status" -eq 0 ] && status=1
fi
rm -rf "$EXPORT"
if [ -n "$DMON_PID" ]; then
  kill "$DMON_PID" 2> /dev/null; DMON_PID=
  [ -d "$GRID" ] && cp "$DMON" "$GRID/dmon.txt"
fi
(cd "$GRID" && tar czf "$OUT/logs.tar.gz" grid.json runs/*/train.log runs/*/eval.log \
    $([ -f dmon.txt ] && echo dmon.txt) 2>/dev/null)
echo "done in $SECONDS s"
exit "$status"
