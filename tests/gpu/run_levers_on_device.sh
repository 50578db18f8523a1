#!/usr/bin/env bash
# One GPU: the GPU tier of the merged tree, then the TeaCache and compile benchmarks (results under $OUT).
#   bash tests/gpu/run_levers_on_device.sh
# Carries: .whl (diffusers, importlib_metadata, torchao) and .ext/SageAttention (built SageAttention2 sources).
set -uo pipefail
OUT=${OUT:-/tmp/dax-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/.ext/SageAttention:/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import sageattention.sm90_compile" && echo "SageAttention2 sm90 kernels importable" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/gpu -x 2>&1 | tail -15 | tee "$OUT/gpu_tier.log"
python3 -m tests.benchmarks.bench_teacache --out "$OUT/teacache.json" --compute-reps 2 --reps 5 2>&1 | tail -30 | tee "$OUT/teacache.log"
python3 -m tests.benchmarks.bench_compile --case 14b-720p --out "$OUT/compile.json" \
  --variant 'bf16-sdpa=[]' \
  --variant 'fp8-sage=[{"kind": "quantize"}, {"kind": "attention", "backend": "sage"}]' 2>&1 | tail -20 | tee "$OUT/compile.log"
