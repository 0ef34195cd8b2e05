#!/usr/bin/env bash
# Carry DALI to a GPU machine that reaches no package index and takes at most 64 MiB of
# copied files per command. About 255 MB of wheels (DALI for CUDA 13, Python 3.12, and the
# dependencies that image lacks) go as five parts, one per call, back to back: a machine
# stays warm only ~30 s after a call, and ignored files survive only while it is warm.
#
#   here:  bash bench/gpu/carry_dali.sh split    # wheels -> .gpu_carry/dali.part-00 .. -NN
#   then one device `run` per part, carry [".gpu_carry/dali.part-0N"], command "true";
#   with the last part:  bash bench/gpu/carry_dali.sh join && bash bench/gpu/run.sh train
#   there: bash bench/gpu/carry_dali.sh join     # parts -> wheels -> pip install --no-index
set -euo pipefail
DIR=.gpu_carry
PART=56m
case "${1:-}" in
  split)
    rm -rf "$DIR" && mkdir -p "$DIR/wheels"
    python3 -m pip download -q -d "$DIR/wheels" --no-deps --only-binary=:all: \
        --python-version 3.12 --platform manylinux_2_28_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        nvidia-dali-cuda130==2.4.0 nvidia-libnvcomp-cu13 nvidia-nvimgcodec-cu13 \
        nvidia-nvjpeg nvidia-nvjpeg2k-cu13 nvidia-nvtiff-cu13 \
        astunparse gast libcst makefun nvtx optree
    tar -C "$DIR" -cf - wheels | split -b "$PART" -d - "$DIR/dali.part-"
    rm -rf "$DIR/wheels"
    (cd "$DIR" && sha256sum dali.part-* > SHA256SUMS && ls -la)
    ;;
  join)
    ls "$DIR"/dali.part-* > /dev/null
    cat "$DIR"/dali.part-* | tar -C "$DIR" -xf -
    python3 -m pip install -q --no-index --no-deps "$DIR"/wheels/*.whl
    python3 -c "import nvidia.dali as d; print('dali', d.__version__)"
    ;;
  *)
    echo "usage: bash bench/gpu/carry_dali.sh split|join" >&2
    exit 2
    ;;
esac
