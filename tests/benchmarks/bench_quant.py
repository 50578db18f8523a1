"""FP8 and INT8 linear layers on Wan2.1-14B at 1280x720x81 (75,600 video tokens, 512 text tokens), in one run.

    python -m tests.benchmarks.bench_quant --out results.json [--skip-forward]

1. Block linears: the ten linear layers of one 14B block (self-attention q/k/v/o, cross-attention q/k/v/o,
   FFN), compiled with inductor (fullgraph), bf16 against FP8 and INT8 at both granularities; DAX's own
   path (_scaled_mm / _int_mm) and, where torchao is installed, torchao's.
2. Whole forward: one 14B 720p forward (one CFG branch), each block compiled (one graph shared by the 40
   blocks: regional compilation), bf16 against FP8 per-token/per-channel on the same weights.
3. Memory: GPU memory held by the 14B model once its linears are FP8 (bf16: 28.6 GiB).
4. Fidelity: the same forward with INT8 (eager), and FP8, against bf16: cosine similarity and relative
   error of the velocity and of the denoised latent x0 = x - sigma * v (one denoising step).

Weights are seeded random values at the real shapes, generated on the GPU (``common.build_ours``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dax_core.models.wan import WanBlock, WanModel
from dax_core.quant import (
    QConfig,
    linear_weight_bytes,
    qconfig_for,
    quantize_dynamic,
    torchao_available,
)
from dax_core.quant.wan import WAN_KEEP_DEFAULT

from .common import CASES, TEXT_TOKENS, build_ours, cuda_time, device_name, fill_seeded_, median, write_json

log = logging.getLogger("bench_quant")

CASE = CASES["14b-720p"]
SIGMA = 0.7  # timestep 700 on Wan's 0..1000 scale
VARIANTS = [  # (label, dtype, granularity, backend)
    ("fp8 per-token/per-channel", "fp8", "per-token-per-channel", "torch"),
    ("fp8 per-tensor", "fp8", "per-tensor", "torch"),
    ("int8 per-token/per-channel", "int8", "per-token-per-channel", "torch"),
    ("int8 per-tensor", "int8", "per-tensor", "torch"),
    ("fp8 per-token/per-channel", "fp8", "per-token-per-channel", "torchao"),
    ("int8 per-token/per-channel", "int8", "per-token-per-channel", "torchao"),
]


def _free() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def _block_linears(block: WanBlock, x: torch.Tensor, ctx: torch.Tensor):
    """The ten linears of a Wan block in their data flow (q feeds o in place of the attention output)."""
    sa, ca = block.self_attn, block.cross_attn
    q, k, v = sa.q(x), sa.k(x), sa.v(x)
    y = sa.o(q)
    z = ca.o(ca.q(y))
    ck, cv = ca.k(ctx), ca.v(ctx)
    return k, v, ck, cv, block.ffn(z)


def _time_compiled(fn: Callable, args: tuple, warmup: int, reps: int) -> dict:
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    start = time.perf_counter()
    compiled(*args)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    times = cuda_time(lambda: compiled(*args), warmup, reps)
    return {"median_ms": median(times) * 1e3, "times_ms": [t * 1e3 for t in times], "compile_s": compile_s}


@torch.inference_mode()
def bench_block_linears(seed: int, warmup: int, reps: int) -> dict:
    spec = CASE.spec
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(1, CASE.tokens, spec.dim, generator=g, device="cuda").bfloat16()
    ctx = torch.randn(1, TEXT_TOKENS, spec.dim, generator=g, device="cuda").bfloat16()
    block = WanBlock(spec, device="meta", dtype=torch.bfloat16).to_empty(device="cuda")
    fill_seeded_(block, seed, rename=lambda n: f"blocks.0.{n}")
    s, d, f = CASE.tokens, spec.dim, spec.ffn_dim
    flops = 2 * s * (6 * d * d + 2 * d * f) + 2 * TEXT_TOKENS * 2 * d * d
    out: dict = {"shape": {"tokens": s, "dim": d, "ffn_dim": f, "text_tokens": TEXT_TOKENS}, "flops": flops}
    out["bf16"] = _time_compiled(_block_linears, (block, x, ctx), warmup, reps)
    base = out["bf16"]["median_ms"]
    out["bf16"]["tflops"] = flops / base / 1e9
    log.info("block linears bf16: %.2f ms (%.0f TFLOP/s)", base, out["bf16"]["tflops"])
    for label, dtype, granularity, backend in VARIANTS:
        key = f"{dtype}-{granularity}-{backend}"
        if backend == "torchao" and not torchao_available():
            out[key] = {"label": label, "backend": backend, "skipped": "torchao not installed"}
            continue
        if dtype == "fp8" and torch.cuda.get_device_capability() < (8, 9):
            out[key] = {"label": label, "backend": backend, "skipped": "no FP8 on this GPU"}
            continue
        quantized = quantize_dynamic(copy.deepcopy(block), {"": qconfig_for(dtype, granularity)}, backend=backend)
        stats = _time_compiled(_block_linears, (quantized, x, ctx), warmup, reps)
        stats.update(label=label, backend=backend, speedup_vs_bf16=base / stats["median_ms"])
        out[key] = stats
        log.info("block linears %s (%s): %.2f ms, %.2fx bf16", label, backend, stats["median_ms"],
                 stats["speedup_vs_bf16"])  # fmt: skip
        del quantized
        _free()
    return out


def _regional_forward(model: WanModel) -> Callable:
    """prepare -> each block through one compiled graph (shared by all blocks) -> finish."""

    def run_block(block, x, e0, ctx, rope, self_attn, cross_attn):
        return block(x, e0, ctx, rope, self_attn, cross_attn)

    torch._dynamo.reset()
    step = torch.compile(run_block, fullgraph=True)

    def forward(x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        p = model.prepare(x, t, ctx)
        h = p.tokens
        for block in model.blocks:
            h = step(block, h, p.e0, p.context, p.rope, model.self_attn_fn, model.cross_attn_fn)
        return model.finish(h, p)

    return forward


def _timed_forward(forward: Callable, inputs: tuple, reps: int) -> tuple[dict, torch.Tensor]:
    from torch._dynamo.utils import counters

    counters.clear()
    start = time.perf_counter()
    out = forward(*inputs)
    torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    times = cuda_time(lambda: forward(*inputs), 0, reps)
    stats = {"median_s": median(times), "times_s": times, "first_call_s": first_s,
             "compiled_graphs": int(counters["stats"]["unique_graphs"])}  # fmt: skip
    return stats, out.float().cpu()


def _fidelity(got: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> dict:
    def metrics(a: torch.Tensor, b: torch.Tensor) -> dict:
        a, b = a.double().flatten(), b.double().flatten()
        return {"cosine": torch.nn.functional.cosine_similarity(a, b, dim=0).item(),
                "rel_error": ((a - b).norm() / b.norm()).item()}  # fmt: skip

    x = x.double().cpu()
    return {"velocity": metrics(got, ref), "x0": metrics(x - SIGMA * got.double(), x - SIGMA * ref.double())}


def _keep_dict(qconfig: QConfig) -> dict:
    return {"": qconfig, **dict.fromkeys(WAN_KEEP_DEFAULT)}


@torch.inference_mode()
def bench_forward(seed: int, reps: int) -> dict:
    spec = CASE.spec
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    x = torch.randn(CASE.latent_shape, generator=g, device="cuda")
    t = torch.tensor([SIGMA * 1000], device="cuda")
    ctx = torch.randn(1, TEXT_TOKENS, spec.text_dim, generator=g, device="cuda").bfloat16()
    inputs = (x, t, ctx)
    out: dict = {"case": CASE.name, "tokens": CASE.tokens, "compile": "regional: each block compiled (fullgraph)"}

    _free()
    base = torch.cuda.memory_allocated()
    model = build_ours(spec, "cuda", torch.bfloat16, seed)
    out["bf16_model_gib"] = (torch.cuda.memory_allocated() - base) / 2**30
    out["bf16"], v_bf16 = _timed_forward(_regional_forward(model), inputs, reps)
    log.info("forward bf16: %.2f s (first call %.1f s)", out["bf16"]["median_s"], out["bf16"]["first_call_s"])

    fp8 = qconfig_for("fp8", "per-token-per-channel")
    start = time.perf_counter()
    quantize_dynamic(model, _keep_dict(fp8))
    torch.cuda.synchronize()
    out["fp8_quantize_s"] = time.perf_counter() - start
    _free()
    out["fp8_model_gib"] = (torch.cuda.memory_allocated() - base) / 2**30
    out["fp8_linear_gib"] = linear_weight_bytes(model) / 2**30
    out["fp8_backend"] = type(model.blocks[0].ffn[0]).__name__
    log.info("fp8 model: %.2f GiB on the GPU (bf16 %.2f GiB)", out["fp8_model_gib"], out["bf16_model_gib"])
    out["fp8"], v_fp8 = _timed_forward(_regional_forward(model), inputs, reps)
    out["fp8_speedup_vs_bf16"] = out["bf16"]["median_s"] / out["fp8"]["median_s"]
    log.info("forward fp8: %.2f s, %.3fx bf16", out["fp8"]["median_s"], out["fp8_speedup_vs_bf16"])
    del model
    _free()

    model = build_ours(spec, "cuda", torch.bfloat16, seed)
    quantize_dynamic(model, _keep_dict(qconfig_for("int8", "per-token-per-channel")))
    v_int8 = model(*inputs).float().cpu()  # eager: fidelity only
    del model
    _free()

    out["fidelity"] = {"fp8 per-token/per-channel": _fidelity(v_fp8, v_bf16, x),
                       "int8 per-token/per-channel": _fidelity(v_int8, v_bf16, x)}  # fmt: skip
    return out


def _table(results: dict) -> str:
    lines = [f"device: {results['device']}, torch {results['torch']}, torchao {results['torchao']}"]
    blk = results.get("block_linears")
    if blk:
        lines += ["", "block linears, 14B 720p, compiled    median ms   x bf16", "-" * 58]
        lines.append(f"{'bf16':36} {blk['bf16']['median_ms']:9.2f}    1.00")
        for r in blk.values():
            if isinstance(r, dict) and "label" in r:
                name = f"{r['label']} ({r['backend']})"
                value = r.get("skipped") or f"{r['median_ms']:9.2f}   {r['speedup_vs_bf16']:5.2f}"
                lines.append(f"{name:36} {value}")
    fwd = results.get("forward")
    if fwd:
        lines += ["", f"whole forward, {fwd['case']}, {fwd['compile']}"]
        lines.append(f"  bf16 {fwd['bf16']['median_s']:.2f} s, fp8 {fwd['fp8']['median_s']:.2f} s: "
                     f"{fwd['fp8_speedup_vs_bf16']:.3f}x")  # fmt: skip
        lines.append(
            f"  GPU memory of the model: bf16 {fwd['bf16_model_gib']:.2f} GiB, fp8 {fwd['fp8_model_gib']:.2f} GiB"
        )
        for name, fid in fwd["fidelity"].items():
            v, x0 = fid["velocity"], fid["x0"]
            lines.append(f"  {name}: velocity cos {v['cosine']:.5f} rel {v['rel_error']:.4f}; "
                         f"x0 cos {x0['cosine']:.6f} rel {x0['rel_error']:.4f}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions of the block linears")
    parser.add_argument("--forward-reps", type=int, default=2, help="timed repetitions of the whole forward")
    parser.add_argument("--skip-forward", action="store_true", help="only the block linears (about a minute)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("bench_quant needs a CUDA GPU")
    try:
        import torchao

        ao_version = torchao.__version__
    except ImportError:
        ao_version = "not installed"
    results: dict = {"device": device_name(), "torch": torch.__version__, "torchao": ao_version}
    start = time.perf_counter()
    results["block_linears"] = bench_block_linears(args.seed, args.warmup, args.reps)
    write_json(args.out, results)
    if not args.skip_forward:
        results["forward"] = bench_forward(args.seed, args.forward_reps)
    results["wall_s"] = time.perf_counter() - start
    write_json(args.out, results)
    log.info("\n%s\n(total %.0f s)", _table(results), results["wall_s"])


if __name__ == "__main__":
    main()
