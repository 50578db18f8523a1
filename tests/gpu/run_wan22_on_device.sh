#!/usr/bin/env bash
# One GPU (about 20 minutes on an H200, every stage): the Wan family's GPU tests (the I2V / FLF2V model in
# bf16 and with its levers; an A14B expert offloaded and swapped back, a pair taking turns, TI2V's per-token timesteps
# on CUDA), one forward of Wan2.1 I2V 14B at 1280x720x81 and of Wan2.2 TI2V 5B at 1280x704x121 lever by lever (the
# speed ladder: stock bf16, + SageAttention2, + FP8 linears, + compile) against diffusers on the same weights, then
# both A14B experts resident in bf16 and FP8, the swap cost and a 40-step run projected from an expert's timed 720p
# forward, at real shapes. Results under $OUT as stages end.
#   bash tests/gpu/run_wan22_on_device.sh                    # tests i2v ti2v swap
#   bash tests/gpu/run_wan22_on_device.sh i2v swap           # some stages, in this order
#   QUICK=1 bash tests/gpu/run_wan22_on_device.sh i2v ti2v   # one timed forward per rung (after the first call)
# Stages: tests (tests/gpu/test_image_model_cuda.py, tests/gpu/test_experts_cuda.py), tests-ti2v (its TI2V test
# alone), i2v, i2v-peer (stock and diffusers' line only, one timed forward each), ti2v, swap, swap-full (FP8 experts, the timed forward with the full stack: Sage + compile).
# Carries (optional): .kern/*.tar.gz (prebuilt SageAttention2 for sm90, unpacked to /tmp/kern), .whl/*.whl
# (diffusers, torchao for the peer line); without them the rungs that need them are reported as skipped, with why.
# Writes gpu.txt, run.log, forward_i2v_14b.{json,md}, forward_ti2v_5b.{json,md}, swap.{json,md}.
# Time limits (H200), the most a stage may take: tests 240 s, i2v 560 s, ti2v 270 s, swap 360 s (about 24 minutes in
# all; a stage that runs over is stopped and the next one starts, the ladder having written every rung it finished).
# The 14B ladder builds 16 B parameters once (~20 s), then per rung a first call and the timed forwards (~8-11 s each
# in bf16; the compile rung's first call ~20 s more), then diffusers' three rungs, whose torchao + regional-compile
# first call took 195 s at T2V 14B 720p: about 8 minutes in all. Where one call may last at most 10 minutes, run
# three: `tests ti2v`, `i2v`, `swap`.
set -uo pipefail
. tests/gpu/device_setup.sh
RUNGS="stock,sage,fp8,compile"  # the full stack lever by lever; a rung that cannot run here is skipped, with why

for s in ${@:-tests i2v ti2v swap}; do
  case $s in
    tests) stage tests 240 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_image_model_cuda.py \
      tests/gpu/test_experts_cuda.py ;;
    i2v) stage i2v 560 python3 -m dax_core bench --model i2v-14b --rungs "$RUNGS" --peer $QUICK_FLAG \
      --out "$OUT/forward_i2v_14b" ;;
    i2v-peer) stage i2v-peer 330 python3 -m dax_core bench --model i2v-14b --rungs stock --peer --quick \
      --out "$OUT/forward_i2v_14b_peer" ;;
    ti2v) stage ti2v 270 python3 -m dax_core bench --model ti2v-5b --rungs "$RUNGS" --peer $QUICK_FLAG \
      --out "$OUT/forward_ti2v_5b" ;;
    swap) stage swap 360 python3 -m tests.benchmarks.bench_expert_swap --reps 3 --video 1280x720x81 \
      --out "$OUT/swap.json" ;;
    swap-full) stage swap-full 200 python3 -m tests.benchmarks.bench_expert_swap --dtypes fp8 --reps 2 \
      --forward-stack full --video 1280x720x81 --out "$OUT/swap_full.json" ;;
    tests-ti2v) stage tests-ti2v 60 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_experts_cuda.py \
      -k ti2v ;;
    *) echo "unknown stage $s" >&2; exit 2 ;;
  esac
done
for f in "$OUT"/forward_*.md "$OUT"/swap*.md; do [ -f "$f" ] && sed -n '/^| rung/,/^$/p;/^| weights/,/^$/p;/^## DAX against/,/^## Assumptions/p' "$f"; done
echo "== done $(date +%T)" | tee -a "$LOG"
