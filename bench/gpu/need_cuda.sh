# Sourced by the GPU scripts: one line and exit 2 where there is no GPU, before any stage
# starts (on a CPU each stage failed on its own and the reason stayed in a log). Uses the
# caller's $PY; names the calling script.
need_cuda() {
  $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2> /dev/null \
    && return
  echo "$(basename "$0"): no CUDA device here (torch.cuda.is_available() is False): this script measures a GPU" >&2
  exit 2
}
