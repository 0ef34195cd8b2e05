#!/usr/bin/env bash
# one-off session script (not committed): #13's data cost and the 32-queue pack row
set -u
export HGAN_COMMIT=b55b6df789fb965fdc18faf3f6718d70a48e91f3 PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T=$OUT/t; mkdir -p $T; D=/tmp/hgan-trainstep-data
nvidia-smi > $T/nvidia-smi.txt 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" > $T/versions.txt 2>&1
run() { n=$1; l=$2; shift 2; echo "== $n start ${SECONDS}s" | tee -a $T/log.txt
  timeout -k 5 $l python3 "$@" > $T/$n.txt 2>&1; echo "== $n rc $? at ${SECONDS}s" | tee -a $T/log.txt
  tail -4 $T/$n.txt; cp bench/results/*.json $T/ 2>/dev/null; tar czf $OUT/call1.tar.gz -C $OUT t; }
run prep 120 bench/trainstep_table.py --data $D --prep
run capture32 100 bench/trainstep_table.py --data $D --resolution 32 --variants capture_fused_adam capture
run datawait 60 bench/gpu/data_wait.py --data $D --loaders auto
run pack15 75 bench/trainstep_table.py --data $D --resolution 32 --pack 15
run pack15c32 75 bench/trainstep_table.py --data $D --resolution 32 --pack 15 --connections 32
python3 bench/trainstep_table.py --summary > $T/table.md 2>&1; cat $T/table.md | tail -30
cp bench/results/*.json $T/ 2>/dev/null; tar czf $OUT/call1.tar.gz -C $OUT t
echo "done ${SECONDS}s"
