#!/usr/bin/env bash
# The GPU tier and the forward benchmark in one call on a GPU machine (results under $OUT).
#   bash tests/gpu/run_on_device.sh [bench cases...]
# Expects wheels for what the machine lacks (diffusers, importlib_metadata) in .whl/.
set -uo pipefail
OUT=${OUT:-/tmp/dax-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gpu_tier.log"
cases=("$@")
[ ${#cases[@]} -eq 0 ] && cases=(1.3b-480p 14b-720p)
args=()
for c in "${cases[@]}"; do args+=(--case "$c"); done
python3 -m tests.benchmarks.bench_forward "${args[@]}" --out "$OUT/bench_forward.json" 2>&1 | tee "$OUT/bench_forward.log"
