#!/usr/bin/env bash
# Two or more GPUs: the NCCL tests of the parallel tier and the sequence-parallel benchmark (results under $OUT).
#   bash tests/gpu/run_parallel_on_device.sh [extra bench_parallel arguments]
set -uo pipefail
OUT=${OUT:-/tmp/dax-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
nvidia-smi topo -m | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/gpu/test_parallel_cuda.py 2>&1 | tail -8 | tee "$OUT/parallel_tier.log"
torchrun --nproc_per_node="$(nvidia-smi -L | wc -l)" -m tests.benchmarks.bench_parallel --out "$OUT/bench_parallel.json" "$@" \
  2>&1 | tee "$OUT/bench_parallel.log" | tail -40
