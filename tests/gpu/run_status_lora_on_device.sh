#!/usr/bin/env bash
# One GPU, one call (about 9 minutes on an H200): the GPU tests of the sampler's status and peak memory, of LoRA and of
# radial attention under compile, then what previews cost per 14B 720p step and the 14B LoRA benchmark (merge at build,
# strength change on the warm engine, forward with and without the LoRA). Results under $OUT as they come.
#   bash tests/gpu/run_status_lora_on_device.sh                 # tests preview lora
#   bash tests/gpu/run_status_lora_on_device.sh preview         # some stages, in this order
# Carries (optional): .kern/*.tar.gz (prebuilt SageAttention2 / SpargeAttn for sm90, unpacked to /tmp/kern).
set -uo pipefail
. tests/gpu/device_setup.sh

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
