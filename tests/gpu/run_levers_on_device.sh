#!/usr/bin/env bash
# One GPU: the TeaCache and compile benchmarks, then the GPU tier (results under $OUT), stage by stage, so that
# a run cut short keeps what the finished stages wrote.
#   bash tests/gpu/run_levers_on_device.sh                       # every stage
#   bash tests/gpu/run_levers_on_device.sh teacache compile-bf16  # some of them, in this order
# Stages: teacache, compile-bf16 (bf16 + SDPA), compile-fp8 (FP8 linears + SageAttention2), gpu-tier.
# Carries: .whl (diffusers, importlib_metadata, torchao) and .ext/SageAttention (built SageAttention2 sources).
set -uo pipefail
OUT=${OUT:-/tmp/dax-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=$PWD/.ext/SageAttention:/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
FP8_SAGE='[{"kind": "quantize"}, {"kind": "attention", "backend": "sage"}]'
for stage in "${@:-teacache compile-bf16 compile-fp8 gpu-tier}"; do
  for s in $stage; do
    echo "== $s $(date +%T)" | tee -a "$OUT/stages.log"
    case $s in
      teacache) python3 -m tests.benchmarks.bench_teacache --out "$OUT/teacache.json" --compute-reps 2 --reps 5 \
        2>&1 | tail -30 | tee "$OUT/teacache.log" ;;
      compile-bf16) python3 -m tests.benchmarks.bench_compile --case 14b-720p --out "$OUT/compile_bf16.json" \
        --variant 'bf16-sdpa=[]' 2>&1 | tail -20 | tee "$OUT/compile_bf16.log" ;;
      compile-fp8) python3 -m tests.benchmarks.bench_compile --case 14b-720p --out "$OUT/compile_fp8.json" \
        --variant "fp8-sage=$FP8_SAGE" 2>&1 | tail -20 | tee "$OUT/compile_fp8.log" ;;
      gpu-tier) python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tail -15 | tee "$OUT/gpu_tier.log" ;;
      *) echo "unknown stage $s" >&2; exit 2 ;;
    esac
  done
done
echo "== done $(date +%T)" | tee -a "$OUT/stages.log"
