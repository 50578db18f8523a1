#!/usr/bin/env bash
# One GPU, one call (about 9 minutes on an H200): the GPU tests of the sampler's status and peak memory, of LoRA and of
# radial attention under compile, then what previews cost per 14B 720p step and the 14B LoRA benchmark (merge at build,
# strength change on the warm engine, forward with and without the LoRA). Results under $OUT as they come.
#   bash tests/gpu/run_status_lora_on_device.sh                 # tests preview lora
#   bash tests/gpu/run_status_lora_on_device.sh preview         # some stages, in this order
# Carries (optional): .kern/*.tar.gz (prebuilt SageAttention2 / SpargeAttn for sm90, unpacked to /tmp/kern).
set -uo pipefail
OUT=${OUT:-/tmp/dax-out}
mkdir -p "$OUT"
LOG="$OUT/run.log"
if ls .kern/*.tar.gz >/dev/null 2>&1; then
  mkdir -p /tmp/kern && for a in .kern/*.tar.gz; do tar xzf "$a" -C /tmp/kern; done
fi
export PYTHONPATH=/tmp/kern:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

stage() {  # name, time limit in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name $(date +%T)" | tee -a "$LOG"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG" | grep -vE "^DEBUG" | tail -25
  echo "== $name ended: ${PIPESTATUS[0]} $(date +%T)" | tee -a "$LOG"
}

for s in ${@:-tests preview lora}; do
  case $s in
    tests) stage tests 100 python3 -m pytest -q -p no:cacheprovider -p no:logging -rs tests/gpu/test_status_cuda.py \
      tests/gpu/test_lora_cuda.py "tests/gpu/test_radial_cuda.py::test_a_block_with_radial_attention_compiles_without_graph_breaks" ;;
    preview) stage preview 150 python3 -m tests.benchmarks.bench_preview --step-reps 1 --out "$OUT/preview.json" \
      --md "$OUT/preview.md" ;;
    lora) stage lora 330 python3 -m tests.benchmarks.bench_lora --case 14b-720p --workdir /tmp/dax-lora --warmup 1 \
      --reps 1 --out "$OUT/lora.json" ;;
    *) echo "unknown stage $s" >&2; exit 2 ;;
  esac
done
echo "== done $(date +%T)" | tee -a "$LOG"
