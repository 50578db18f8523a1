#!/usr/bin/env bash
# One GPU, one call (about 6 minutes on an H200): the GPU tests of the fused quantization kernels and CUDA graphs,
# then the speed ladder (python -m dax_core bench) at 14B 720p and 1.3B 480p, results under $OUT as they come.
#   bash tests/gpu/run_ladder_on_device.sh                        # kernels ladder-14b ladder-1.3b
#   bash tests/gpu/run_ladder_on_device.sh ladder-1.3b peer-1.3b  # some stages, in this order
#   QUICK=1 bash tests/gpu/run_ladder_on_device.sh                # one timed forward per rung
#   AB_RUNGS=full,full_dax bash tests/gpu/run_ladder_on_device.sh ab-14b   # some of the A/B rungs
#   RUNGS=stock,compile bash tests/gpu/run_ladder_on_device.sh ladder-peer-14b  # some of the 14B ladder's rungs
# Stages: kernels, gpu-tier (all of tests/gpu), cold-14b (the full stack's first call in a fresh process with empty
# compile caches), ladder-14b, ladder-1.3b, profile-14b, profile-1.3b (kernel tables of the full stack's forward),
# peer-1.3b (diffusers' line: needs .whl with diffusers, torchao, ...), ladder-peer-1.3b (both in one run),
# ladder-peer-14b (the same at 14B: diffusers' compile alone takes minutes); DAX's fused kernels against what they
# replace: dax-kernels (their GPU tests), bench-dax-14b (site by site), ab-14b (whole 14B forwards of the full stack
# without and with them, same run), profile-14b-dax (the kernel table with them), and at 1.3B: profile-1.3b-dax,
# bench-dax-1.3b, ab-1.3b; row-kernels (the per-row kernels by warps, the norm's loops rolled and unrolled;
# row-kernels-v: V's two alone); sage-inputs (the GPU tests of SageAttention2's inputs);
# sage-variants (SageAttention2's sm90 kernel by layout and Q/K granularity); dax-attention (a Triton attention kernel
# on SageAttention2's prepared inputs against its sm90 kernel).
# Carries (optional): .kern/*.tar.gz (prebuilt SageAttention2 for sm90, unpacked to /tmp/kern), .whl/*.whl.
# Each stage has a time limit, so one that hangs cannot take the others' time; the ladder writes after every rung.
# Writes gpu.txt, run.log, clocks.csv (SM clock, power, throttle reasons every 0.5 s) and each stage's results:
# ladder_*.{json,md}, peer_1.3b.{json,md}, profile_*.txt, dax_kernels_14b.{json,md}, ab_14b.{json,md}, cold_14b.json.
set -uo pipefail
STAGE_SHOW="rung|passed|skipped|failed|error|Error"
. tests/gpu/device_setup.sh
LADDER_14B=${RUNGS:-stock,sage,fp8,compile,teacache,magcache,distill}  # INT8, the CUDA-graph pair: 1.3B only (time)
AB_14B=${AB_RUNGS:-full,full_sage_inputs,full_input_kernels,full_dax}  # the full stack without, with either, both
# the SM clock, power and throttle reasons twice a second, beside the stage times in run.log
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active --format=csv \
  -lms 500 >"$OUT/clocks.csv" 2>/dev/null &
CLOCKS=$!
DAX_ACCELERATIONS='[{"kind": "quantize", "dtype": "fp8", "input_kernels": "dax"},
  {"kind": "attention", "backend": "sage", "sage_inputs": "fused"}, {"kind": "compile"}]'

for s in ${@:-kernels ladder-14b ladder-1.3b}; do
  case $s in
    kernels) stage kernels 300 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_fused_quant.py \
      tests/gpu/test_graph_replay_cuda.py tests/gpu/test_fused_ops.py tests/gpu/test_input_kernels_cuda.py \
      tests/gpu/test_sage_inputs_cuda.py ;;
    gpu-tier) stage gpu-tier 150 python3 -m pytest -q -p no:cacheprovider -rs -x tests/gpu ;;
    profile-14b) stage profile-14b 110 python3 -m tests.gpu.profile_forward --model 14b --out "$OUT/profile_14b.txt" ;;
    profile-1.3b) stage profile-1.3b 60 python3 -m tests.gpu.profile_forward --model 1.3b --out "$OUT/profile_1.3b.txt" ;;
    query-codes) stage query-codes 60 python3 -m pytest -q -p no:cacheprovider -rs -o log_cli=true --log-cli-level=INFO \
      tests/gpu/test_sage_inputs_cuda.py -k query_codes ;;
    dax-kernels) stage dax-kernels 200 python3 -m pytest -q -p no:cacheprovider -rs -o log_cli=true --log-cli-level=INFO \
      tests/gpu/test_sage_inputs_cuda.py \
      tests/gpu/test_input_kernels_cuda.py tests/gpu/test_fused_quant.py tests/gpu/test_fused_ops.py ;;
    bench-dax-14b) stage bench-dax-14b 150 python3 -m tests.benchmarks.bench_dax_kernels --case 14b-720p \
      --out "$OUT/dax_kernels_14b" ;;
    ab-14b) stage ab-14b 330 python3 -m dax_core bench --model 14b --rungs "$AB_14B" $QUICK_FLAG --out "$OUT/ab_14b" ;;
    profile-1.3b-dax) stage profile-1.3b-dax 60 python3 -m tests.gpu.profile_forward --model 1.3b \
      --accelerations "$DAX_ACCELERATIONS" --out "$OUT/profile_1.3b_dax.txt" ;;
    bench-dax-1.3b) stage bench-dax-1.3b 120 python3 -m tests.benchmarks.bench_dax_kernels --case 1.3b-480p \
      --out "$OUT/dax_kernels_1.3b" ;;
    ab-1.3b) stage ab-1.3b 150 python3 -m dax_core bench --model 1.3b --rungs "$AB_14B" $QUICK_FLAG --out "$OUT/ab_1.3b" ;;
    row-kernels) stage row-kernels 420 python3 -m tests.benchmarks.bench_row_kernels --out "$OUT/row_kernels" ;;
    row-kernels-v) stage row-kernels-v 150 python3 -m tests.benchmarks.bench_row_kernels --only V: \
      --out "$OUT/row_kernels_v" ;;
    sage-inputs) stage sage-inputs 150 python3 -m pytest -q -p no:cacheprovider -rs tests/gpu/test_sage_inputs_cuda.py ;;
    dax-attention) stage dax-attention 300 python3 -m tests.benchmarks.bench_dax_attention --out "$OUT/dax_attention" ;;
    sage-variants) stage sage-variants 120 python3 -m tests.benchmarks.bench_sage_variants --out "$OUT/sage_variants" ;;
    profile-14b-dax) stage profile-14b-dax 110 python3 -m tests.gpu.profile_forward --model 14b \
      --accelerations "$DAX_ACCELERATIONS" --out "$OUT/profile_14b_dax.txt" ;;
    cold-14b) stage cold-14b 180 python3 -m tests.gpu.cold_start --model 14b --out "$OUT/cold_14b.json" ;;
    ladder-14b) stage ladder-14b 320 python3 -m dax_core bench --model 14b --rungs "$LADDER_14B" $QUICK_FLAG \
      --out "$OUT/ladder_14b" ;;
    ladder-1.3b) stage ladder-1.3b 150 python3 -m dax_core bench --model 1.3b $QUICK_FLAG --out "$OUT/ladder_1.3b" ;;
    ladder-peer-14b) stage ladder-peer-14b 590 python3 -m dax_core bench --model 14b --rungs "$LADDER_14B" --peer \
      $QUICK_FLAG --out "$OUT/ladder_peer_14b" ;;
    ladder-peer-1.3b) stage ladder-peer-1.3b 300 python3 -m dax_core bench --model 1.3b --peer $QUICK_FLAG \
      --out "$OUT/ladder_peer_1.3b" ;;
    peer-1.3b) stage peer-1.3b 330 python3 -m dax_core bench --model 1.3b --rungs stock --peer $QUICK_FLAG \
      --out "$OUT/peer_1.3b" ;;
    *) echo "unknown stage $s" >&2; exit 2 ;;
  esac
done
for f in "$OUT"/ladder_*.md "$OUT"/peer_*.md "$OUT"/ab_*.md; do [ -f "$f" ] && sed -n '/^| rung/,/^$/p' "$f"; done
for f in "$OUT"/dax_kernels_*.md; do [ -f "$f" ] && sed -n '/^| site/,/^Sum/p' "$f"; done
for f in "$OUT"/sage_variants.md "$OUT"/row_kernels*.md "$OUT"/dax_attention.md; do [ -f "$f" ] && cat "$f"; done
for f in "$OUT"/profile_*.txt; do [ -f "$f" ] && head -30 "$f"; done
kill $CLOCKS 2>/dev/null
echo "== done $(date +%T)" | tee -a "$LOG"
