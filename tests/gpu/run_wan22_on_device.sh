#!/usr/bin/env bash
# One GPU, one call (a few minutes on an H200): the Wan2.2 GPU tests (an expert offloaded and swapped back, a pair
# taking turns, TI2V's per-token timesteps on CUDA), then both A14B experts resident in bf16 and FP8 and the swap
# cost at real shapes. Results under $OUT.
#   bash tests/gpu/run_wan22_on_device.sh              # tests swap
#   bash tests/gpu/run_wan22_on_device.sh swap         # some stages, in this order
set -uo pipefail
OUT=${OUT:-/tmp/dax-out}
mkdir -p "$OUT"
LOG="$OUT/run.log"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

stage() {  # name, time limit in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name $(date +%T)" | tee -a "$LOG"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG" | grep -vE "^DEBUG" | tail -25
  echo "== $name ended: ${PIPESTATUS[0]} $(date +%T)" | tee -a "$LOG"
}

for s in ${@:-tests swap}; do
  case $s in
    tests) stage tests 200 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_experts_cuda.py ;;
    swap) stage swap 300 python3 -m tests.benchmarks.bench_expert_swap --reps 3 --out "$OUT/swap.json" ;;
    *) echo "unknown stage $s" >&2; exit 2 ;;
  esac
done
echo "== done $(date +%T)" | tee -a "$LOG"
