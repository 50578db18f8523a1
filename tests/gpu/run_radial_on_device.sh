#!/usr/bin/env bash
# Radial attention on one GPU (results under $OUT), stage by stage, each stage keeping what it wrote:
#   bash tests/gpu/run_radial_on_device.sh bench           # the benchmark: ~5 min on an H200 (--quick: ~2 min)
#   bash tests/gpu/run_radial_on_device.sh tests           # tests/gpu/test_radial_cuda.py: ~3 min
#   bash tests/gpu/run_radial_on_device.sh bench --quick   # arguments after the stages go to the benchmark
# Carries: .kern/ holding the prebuilt SageAttention2 and SpargeAttn archives (*.tar.gz, each unpacking to its
# package folder), unpacked into /tmp/kern and put on PYTHONPATH; without them those kernels report unavailable.
set -uo pipefail
OUT=${OUT:-/tmp/dax-out}
mkdir -p "$OUT" /tmp/kern
for archive in .kern/*.tar.gz; do
  [ -e "$archive" ] && tar xzf "$archive" -C /tmp/kern
done
export PYTHONPATH=/tmp/kern:$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
for package in sageattention spas_sage_attn; do
  python3 -c "import $package; print('$package imports')" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
done
stages=()
while [ $# -gt 0 ] && { [ "$1" = bench ] || [ "$1" = tests ]; }; do stages+=("$1"); shift; done
[ ${#stages[@]} -eq 0 ] && stages=(bench tests)
for stage in "${stages[@]}"; do
  echo "== $stage $(date +%T)" | tee -a "$OUT/stages.log"
  case $stage in
    bench) timeout 380 python3 -m tests.benchmarks.bench_radial "$@" --out "$OUT/radial.json" --md "$OUT/radial.md" \
      2>&1 | tail -60 | tee "$OUT/bench_radial.log" ;;
    tests) timeout 190 python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_radial_cuda.py 2>&1 | tail -60 \
      | tee "$OUT/radial_gpu_tests.log" ;;
  esac
done
echo "== done $(date +%T)" | tee -a "$OUT/stages.log"
