"""A Triton attention kernel on SageAttention2's prepared inputs, against SageAttention2's sm90 kernel on the same.

    python -m tests.benchmarks.bench_dax_attention --out docs/benchmarks/dax_attention_h200

An experiment, not the product's (on an H200 its best configuration ran at 0.57-0.60x of Sage's kernel:
``docs/benchmarks/dax_attention_h200.md``): the kernel here reads exactly what ``sage_prepared.sage_attend`` hands
the sm90 kernel (int8 Q and smoothed K with per-thread scales, fp8 V per channel, transposed and permuted within
each 16 tokens; ``sage_layout``) and computes what it computes: Q·K in int8 with int32 sums, each score times its
query's and key's scales, an online softmax in float32 with P scaled by 2^8.807 (about 448) into e4m3's range, P·V
in fp8 with float32 sums, V's per-channel scale at the end. The keys of each block are loaded in V's position order,
so the scores' columns line up with V's rows as stored. SageAttention2's sm90 kernel runs one warpgroup of 64 query
rows per program, its MMAs and softmax one after the other; Triton here takes 64 or 128 rows (one or two warpgroups)
and pipelines the loads of the next block (``num_stages``).

At Wan's self-attention shapes (14B 720p: 75,600 tokens x 40 heads; 1.3B 480p: 32,760 x 12; head_dim 128): ms per
call (median), TFLOP/s, against Sage's kernel in the same run, and the error of each output against float32
attention of the same bf16 q, k, v (8,192 tokens, 2 heads, so that exact attention fits).
"""

from __future__ import annotations

import functools
import logging

import torch
import triton
import triton.language as tl

from dax_core.attention import sage_layout as L
from dax_core.attention.sage_prepared import sage_attend
from dax_core.bench.timing import median, timed
from tests.benchmarks.common import attention_inputs, exact_attention, run_kernel_bench

log = logging.getLogger("bench_dax_attention")
SHAPES = {"14b self": (75600, 40), "1.3b self": (32760, 12)}
HEAD_DIM = 128
CONFIGS = (  # (query rows, keys per block, warps, pipeline stages) of each program
    (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 2), (128, 64, 8, 3), (64, 128, 4, 2), (64, 64, 4, 2),
    (64, 64, 4, 3),
)  # fmt: skip
"""Each compiles for sm_90 to int8 and fp8 wgmma without spilling (128 rows at 4 warps spills: left out)."""
S_FP8_OFFSET = tl.constexpr(8.807)  # log2 of the factor P is scaled by before its fp8 cast (Sage's: about 448)
LOG2E = 1.4426950408889634


@triton.jit
def _attention_kernel(q_ptr, qs_ptr, k_ptr, ks_ptr, vt_ptr, vs_ptr, o_ptr, tokens, padded, heads, n_qs, n_ks, qk_scale,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, STAGES: tl.constexpr):  # fmt: skip
    # One program: BLOCK_M query rows of one head against every key, BLOCK_N keys at a time.
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    width = heads * D
    d = tl.arange(0, D)
    t = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = (t < tokens)[:, None]
    q = tl.load(q_ptr + ((b * tokens + t) * width + h * D)[:, None] + d[None, :], mask=rows, other=0)
    # Q's scale: rows t and t + 8 of each 16 share one (sage_layout.quantize_query); log2(e) / sqrt(D) folded in
    qs = tl.load(qs_ptr + (b * heads + h) * n_qs + (t // 16) * 8 + t % 8, mask=t < tokens, other=0.0) * qk_scale
    m = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)  # softmax's denominator, P scaled as in the sums
    acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
    p = tl.arange(0, BLOCK_N)
    w = p % 16
    order = (w // 4) * 2 + ((w // 2) % 2) * 8 + w % 2  # the token at each position of a 16 in V's layout
    for n0 in tl.range(0, tokens, BLOCK_N, num_stages=STAGES):
        key = n0 + (p // 16) * 16 + order
        valid = key < tokens
        k = tl.load(k_ptr + ((b * tokens + key) * width + h * D)[:, None] + d[None, :], mask=valid[:, None], other=0)
        ks = tl.load(ks_ptr + (b * heads + h) * n_ks + (key // 128) * 4 + (key % 8) // 2, mask=valid, other=0.0)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * qs[:, None] * ks[None, :]  # int32 sums: exact in float32
        s = tl.where(valid[None, :], s, -1.0e30)
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        e = tl.exp2(s - (m_new - S_FP8_OFFSET)[:, None])
        total = total * alpha + tl.sum(e, axis=1)
        vt = tl.load(vt_ptr + (b * D + d)[:, None] * (heads * padded) + h * padded + (n0 + p)[None, :])
        acc = acc * alpha[:, None] + tl.dot(e.to(vt_ptr.dtype.element_ty), tl.trans(vt))
        m = m_new
    vs = tl.load(vs_ptr + (b * heads + h) * D + d)
    out = acc * (vs[None, :] / total[:, None])
    tl.store(o_ptr + ((b * tokens + t) * width + h * D)[:, None] + d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=rows)  # fmt: skip


def attend(q, q_scale, k, k_scale, v, v_scale, sm_scale: float, out_dtype: torch.dtype, config=CONFIGS[0]):
    """``sage_layout.attend`` (the sm90 kernel's arithmetic) of the prepared inputs, by the Triton kernel above."""
    if not all(t.is_contiguous() for t in (q, q_scale, k, k_scale, v, v_scale)):
        raise ValueError("the attention kernel indexes its inputs as contiguous tensors: pass .contiguous() ones")
    block_m, block_n, warps, stages = config
    b, s, h, d = q.shape
    out = torch.empty(q.shape, device=q.device, dtype=out_dtype)
    _attention_kernel[(triton.cdiv(s, block_m), h, b)](
        q, q_scale, k, k_scale, v, v_scale, out, s, v.shape[-1], h, q_scale.shape[-1], k_scale.shape[-1],
        sm_scale * LOG2E, BLOCK_M=block_m, BLOCK_N=block_n, D=d, STAGES=stages, num_warps=warps,
    )  # fmt: skip
    return out


def _sage(q, q_scale, k, k_scale, v, v_scale, sm_scale: float) -> torch.Tensor:
    return sage_attend(q, q_scale, k, k_scale, v, v_scale, sm_scale, torch.bfloat16)


def prepared(q, k, v, storage: torch.dtype | None = None):
    """The sm90 kernel's inputs of bf16 q, k, v [B, S, H, D] (``sage_layout``: what DAX's kernels write)."""
    qc, qs = L.quantize_query(q)
    kc, ks = L.quantize_key(L.smooth_key(k)[0])
    vc, vs = L.quantize_value(v, storage)
    return qc.contiguous(), qs, kc.contiguous(), ks, vc, vs  # the codes: views of the padded blocks


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def measure(reps: int) -> list[dict]:
    device = torch.device("cuda")
    sm_scale = HEAD_DIM**-0.5
    small = attention_inputs(8192, 8192, 2, 1)
    exact = exact_attention(*small)
    small_in = prepared(*small)
    kernels = {"sage sm90": functools.partial(_sage, sm_scale=sm_scale)}
    for c in CONFIGS:
        name = f"triton {c[0]}x{c[1]}, {c[2]} warps, {c[3]} stages"
        kernels[name] = functools.partial(attend, sm_scale=sm_scale, out_dtype=torch.bfloat16, config=c)
    errors = {name: _rel(fn(*small_in), exact) for name, fn in kernels.items()}
    rows = []
    for shape, (tokens, heads) in SHAPES.items():
        flops = 4 * tokens * tokens * heads * HEAD_DIM
        full = prepared(*attention_inputs(tokens, tokens, heads, 0))
        sage_out, sage_ms = None, None
        for name, fn in kernels.items():
            call = functools.partial(fn, *full)
            ms = 1000 * median(timed(call, reps, device, warmup=2))
            out = call()
            if sage_out is None:
                sage_out, sage_ms = out, ms
            row = {"shape": shape, "kernel": name, "ms": ms, "tflops": flops / ms / 1e9, "x_sage": sage_ms / ms,
                   "rel_error_vs_fp32": errors[name], "rel_diff_vs_sage": _rel(out, sage_out)}  # fmt: skip
            rows.append(row)
            log.info("%s %s: %.3f ms, %.0f TFLOP/s, %.3fx Sage, error %.2e, from Sage %.2e", shape, name, ms,
                     row["tflops"], row["x_sage"], row["rel_error_vs_fp32"], row["rel_diff_vs_sage"])  # fmt: skip
        del full, sage_out
    return rows


def markdown(result: dict) -> str:
    lines = [f"# A Triton attention kernel on SageAttention2's inputs against its sm90 kernel, on {result['device']}",
             "", f"Command: `{result['command']}` (torch {result['torch']}; median of {result['reps']} calls).", "",
             "| shape | kernel | ms / call | TFLOP/s | x Sage | error vs float32 | difference from Sage |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['shape']} | {r['kernel']} | {r['ms']:.3f} | {r['tflops']:.0f} | {r['x_sage']:.3f}x | "
                     f"{r['rel_error_vs_fp32']:.2e} | {r['rel_diff_vs_sage']:.2e} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    return run_kernel_bench("tests.benchmarks.bench_dax_attention", __doc__.splitlines()[0], measure, markdown, argv)


if __name__ == "__main__":
    main()
