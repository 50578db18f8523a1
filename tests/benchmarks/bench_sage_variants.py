"""SageAttention2's sm90 kernel alone, on inputs it prepared itself, in each layout and Q/K granularity it takes.

    python -m tests.benchmarks.bench_sage_variants --out docs/benchmarks/sage_variants_h200

At Wan's self-attention shapes (14B 720p: 75,600 tokens x 40 heads; 1.3B 480p: 32,760 x 12; head_dim 128) and
cross-attention's (512 text keys): milliseconds per call of ``qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf``
(median of repeats) for NHD / HND and per-thread / per-warp Q/K scales, its TFLOP/s, and the error of each variant's
output against float32 attention of the same bf16 q, k, v (on 8 heads, so that exact attention fits), so that a
faster variant is not a less accurate one unseen. Needs SageAttention2 with its sm90 kernel.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from dax_core.bench.timing import median, timed
from tests.benchmarks.common import attention_inputs, exact_attention, run_kernel_bench

log = logging.getLogger("bench_sage_variants")
SHAPES = {  # name: (query tokens, key tokens, heads)
    "14b self": (75600, 75600, 40),
    "14b cross": (75600, 512, 40),
    "1.3b self": (32760, 32760, 12),
    "1.3b cross": (32760, 512, 12),
}
HEAD_DIM = 128
ERROR_HEADS = 8


def _prepare(q, k, v, layout: str, gran: str):
    from sageattention.core import per_channel_fp8, per_thread_int8_triton, per_warp_int8_cuda

    seq = 1 if layout == "NHD" else 2
    km = k.mean(dim=seq, keepdim=True)
    if gran == "per_warp":
        qi, qs, ki, ks = per_warp_int8_cuda(q, k, km, tensor_layout=layout, BLKQ=64, WARPQ=16, BLKK=128)
    else:
        qi, qs, ki, ks = per_thread_int8_triton(q, k, km, tensor_layout=layout, BLKQ=64, WARPQ=16, BLKK=128,
                                                WARPK=128)  # fmt: skip
    pad = -k.size(seq) % 128
    if pad:
        v = F.pad(v, (0, 0, 0, 0, 0, pad)) if layout == "NHD" else F.pad(v, (0, 0, 0, pad))
    vf, vs, _ = per_channel_fp8(v, tensor_layout=layout, smooth_v=False)
    return qi, qs, ki, ks, vf, vs


def _kernel(prepared, shape, layout: str, gran: str):
    from sageattention import sm90_compile

    qi, qs, ki, ks, vf, vs = prepared
    out = torch.empty(shape, device="cuda", dtype=torch.bfloat16)
    lay, g = (0 if layout == "NHD" else 1), (3 if gran == "per_thread" else 2)

    def run():
        sm90_compile.qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf(qi, ki, vf, out, qs, ks, vs, lay, 0, g,
                                                                         HEAD_DIM**-0.5, 0)  # fmt: skip
        return out

    return run


def measure(reps: int) -> list[dict]:
    device = torch.device("cuda")
    rows = []
    for name, (sq, sk, heads) in SHAPES.items():
        flops = 4 * sq * sk * heads * HEAD_DIM
        for layout in ("NHD", "HND"):
            q, k, v = attention_inputs(sq, sk, heads, 0, layout, HEAD_DIM)
            small = attention_inputs(min(sq, 8192), min(sk, 8192), ERROR_HEADS, 1, layout, HEAD_DIM)
            exact = exact_attention(*small, layout)
            for gran in ("per_thread", "per_warp"):
                run = _kernel(_prepare(q, k, v, layout, gran), q.shape, layout, gran)
                ms = 1000 * median(timed(run, reps, device, warmup=2))
                check = _kernel(_prepare(*small, layout, gran), small[0].shape, layout, gran)().float()
                err = ((check - exact).norm() / exact.norm()).item()
                rows.append({"shape": name, "layout": layout, "granularity": gran, "ms": ms,
                             "tflops": flops / ms / 1e9, "rel_error_vs_fp32": err})  # fmt: skip
                log.info("%s %s %s: %.3f ms (%.0f TFLOP/s), error %.2e", name, layout, gran, ms, flops / ms / 1e9, err)
            del q, k, v
    return rows


def markdown(result: dict) -> str:
    lines = [f"# SageAttention2's sm90 kernel by layout and Q/K granularity on {result['device']}", "",
             f"Command: `{result['command']}`. Kernel alone on inputs Sage prepared; median of {result['reps']}.",
             "", "| shape | layout | Q/K scales | ms / call | TFLOP/s | error vs float32 |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['shape']} | {r['layout']} | {r['granularity']} | {r['ms']:.3f} | {r['tflops']:.0f} | "
                     f"{r['rel_error_vs_fp32']:.2e} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    return run_kernel_bench("tests.benchmarks.bench_sage_variants", __doc__.splitlines()[0], measure, markdown, argv)


if __name__ == "__main__":
    main()
