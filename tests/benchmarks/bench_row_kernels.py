"""DAX's per-row kernels at each number of warps, site by site, in one run, and the norm's loops rolled.

    python -m tests.benchmarks.bench_row_kernels --out docs/benchmarks/row_kernels_h200
    python -m tests.benchmarks.bench_row_kernels --only V: --out ...   # some sites

At Wan's shapes (1.3B: 32,760 tokens x 1536, FFN 8960, 12 heads; 14B: 75,600 x 5120, FFN 13824, 40 heads), every
site of a block where DAX's kernels quantize for the 8-bit linears and SageAttention2: the three norm sites (each
with its residual), GELU with ffn.2's input quantization, o's input quantization, and SageAttention2's Q, K (its
norm, then its smoothed quantization) and V (its amax, then its transposed fp8 write). Each kernel passes over a row
(Q, K: a row of heads) a chunk at a time and finds the row again in L2 for its later passes.

- ``warps``: the site's product call with its kernel launched at 1, 2, 4, 8 and 16 warps (K and V: the one kernel
  named, the other at the product's), which the product's fixed choices (``fused_quant.row_warps``,
  ``fused_ops.norm_warps``, ``sage_inputs.WARPS``) are taken from;
- ``rolled`` (the norm sites): the norm kernel at the product's warps with each pass a loop that ptxas unrolls four
  times, against the product's, unrolled once per chunk of the row (``fused_ops.unroll``);
- ``cast``: a load and an fp8 cast of the site's input, no reduction: the bandwidth this GPU gives such a kernel.

Milliseconds per call (median over repeats of ten back-to-back calls), and the bandwidth of the product's call on
the site's least traffic (its inputs read once, its outputs written once).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from dax_core.attention import sage_inputs
from dax_core.bench.timing import median, timed
from dax_core.models import fused_ops, fused_quant
from tests.benchmarks.common import run_kernel_bench

log = logging.getLogger("bench_row_kernels")
E4M3 = torch.float8_e4m3fn
QMAX = tl.constexpr(448.0)  # a global a Triton kernel reads must be a constexpr
SHAPES = {"1.3b": (32760, 1536, 8960, 12), "14b": (75600, 5120, 13824, 40)}
WARPS = (1, 2, 4, 8, 16)
CALLS = 10  # back to back per timed repeat: a 1.3B site takes 0.05-0.4 ms, near a launch's own cost
EPS = 1e-6


@dataclass(frozen=True)
class Site:
    name: str
    run: Callable[[], object]  # the product's call
    cast: Callable[[], object]  # the cast of its input
    traffic: int  # bytes: inputs read once, outputs written once
    kernel: object  # what its warps are: "rows", "norm", or a sage_inputs kernel

    def product_warps(self, width: int, gelu: bool) -> int:
        if self.kernel == "rows":
            return fused_quant.row_warps(width, gelu)
        if self.kernel == "norm":
            return fused_ops.norm_warps(width)
        return sage_inputs.kernel_warps(self.kernel)


@contextlib.contextmanager
def patched(module, name: str, value) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def forced_warps(site: Site, n: int):
    """The site's kernel launched at ``n`` warps, every other at the product's."""
    if site.kernel == "rows":
        return patched(fused_quant, "row_warps", lambda width, gelu: n)
    if site.kernel == "norm":
        return patched(fused_ops, "norm_warps", lambda dim: n)
    chosen = sage_inputs.kernel_warps
    return patched(sage_inputs, "kernel_warps", lambda kernel: n if kernel is site.kernel else chosen(kernel))


@triton.jit
def _cast(x_ptr, q_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n, other=0.0).to(tl.float32)
    tl.store(q_ptr + i, tl.minimum(tl.maximum(x, -QMAX), QMAX).to(q_ptr.dtype.element_ty), mask=i < n)


def cast(x: torch.Tensor) -> Callable:
    n = x.numel()
    q = torch.empty(n, device=x.device, dtype=E4M3)
    return lambda: _cast[(triton.cdiv(n, 4096),)](x, q, n, BLOCK=4096, num_warps=8)


def sites(tokens: int, dim: int, ffn: int, heads: int, g: torch.Generator) -> Iterator[Site]:
    dev = torch.device("cuda")

    def rand(*shape, scale=1.0, dtype=torch.bfloat16):
        return (scale * torch.randn(*shape, generator=g, device=dev)).to(dtype)

    h = rand(tokens, ffn, scale=2.0)
    yield Site("GELU + quantization (ffn.2's input)", lambda: fused_quant.quantize_rows(h, E4M3, gelu=True), cast(h),
               h.numel() * 3 + tokens * 4, "rows")  # fmt: skip
    x, y = rand(1, tokens, dim), rand(1, tokens, dim)
    e, rows = x.numel(), tokens * 4
    shift, scale, gate = (rand(1, dim, scale=0.1, dtype=torch.float32) for _ in range(3))
    weight, bias = rand(dim, scale=0.1) + 1, rand(dim, scale=0.1)
    yield Site("quantization (o's input)", lambda: fused_quant.quantize_rows(x[0], E4M3), cast(x), e * 3 + rows, "rows")
    yield Site("modulated LayerNorm + quantization (q, k, v's input)",
               lambda: fused_ops.norm_quantized(x, None, None, shift, scale, EPS, False, E4M3), cast(x), e * 3 + rows,
               "norm")  # fmt: skip
    yield Site("gated residual + LayerNorm + quantization (cross q's input)",
               lambda: fused_ops.norm_quantized(x, y, gate, weight, bias, EPS, True, E4M3), cast(x), e * 7 + rows,
               "norm")  # fmt: skip
    yield Site("residual + modulated LayerNorm + quantization (ffn.0's input)",
               lambda: fused_ops.norm_quantized(x, y, None, shift, scale, EPS, False, E4M3), cast(x), e * 7 + rows,
               "norm")  # fmt: skip
    angles = torch.rand(tokens, dim // heads // 2, generator=g, device=dev) * 6.3
    rope = (angles.cos(), angles.sin())
    yield Site("Q: RMSNorm + rotary + int8", lambda: sage_inputs.query(x, weight, rope, heads, EPS), cast(x), e * 3,
               sage_inputs._query_kernel)  # fmt: skip
    yield Site("K: RMSNorm + rotary, written", lambda: sage_inputs.key_normed(x, weight, rope, heads, EPS)[0], cast(x),
               e * 4, sage_inputs._key_norm_kernel)  # fmt: skip
    k, mean = sage_inputs.key_normed(x, weight, rope, heads, EPS)
    yield Site("K: smoothed int8", lambda: sage_inputs.key_quantized(k, mean), cast(k), e * 3,
               sage_inputs._key_quant_kernel)  # fmt: skip
    for kernel, part in ((sage_inputs._value_amax_kernel, "amax"), (sage_inputs._value_fp8_kernel, "fp8 write")):
        yield Site(f"V: per-channel fp8, transposed (its {part} kernel)", lambda: sage_inputs.value(y, heads),
                   cast(y), e * 3, kernel)  # fmt: skip


def _ms(fn: Callable, reps: int) -> float:
    def calls():
        for _ in range(CALLS):
            fn()

    return 1000 * median(timed(calls, reps, torch.device("cuda"), warmup=1)) / CALLS


def measure(reps: int, only: tuple[str, ...] = ()) -> list[dict]:
    """Every site at both shapes, or (``only``) those whose names contain one of the strings given."""
    g = torch.Generator(device="cuda").manual_seed(0)
    out = []
    for shape, (tokens, dim, ffn, heads) in SHAPES.items():
        for site in sites(tokens, dim, ffn, heads, g):
            if only and not any(w in site.name for w in only):
                continue
            gelu = site.name.startswith("GELU")
            chosen = site.product_warps(ffn if gelu else dim, gelu)
            by_warps = {}
            for n in WARPS:
                with forced_warps(site, n):
                    by_warps[n] = _ms(site.run, reps)
            row = {"shape": shape, "site": site.name, "ms_by_warps": by_warps, "product_warps": chosen,
                   "product_ms": _ms(site.run, reps), "cast_ms": _ms(site.cast, reps)}  # fmt: skip
            row["tb_s"] = site.traffic / row["product_ms"] / 1e9
            if site.kernel == "norm":
                with patched(fused_ops, "unroll", lambda width, chunk: 1):
                    row["rolled_ms"] = _ms(site.run, reps)
            out.append(row)
            log.info("%s %s: %s; product (%d warps) %.3f ms, %.2f TB/s, cast %.3f%s", shape, site.name,
                     ", ".join(f"{n}: {ms:.3f}" for n, ms in by_warps.items()), chosen, row["product_ms"],
                     row["tb_s"], row["cast_ms"],
                     f", rolled {row['rolled_ms']:.3f}" if "rolled_ms" in row else "")  # fmt: skip
    return out


def markdown(result: dict) -> str:
    lines = [f"# Per-row kernels by warps, on {result['device']}", "",
             f"Command: `{result['command']}` (torch {result['torch']}; ms per call, median of {result['reps']} "
             f"repeats of {CALLS} calls).", "",
             "| shape | site | " + " | ".join(f"{n} warps" for n in WARPS)
             + " | product when run (warps) | rolled loops | cast of the input | TB/s |",
             "|---|---|" + "---|" * len(WARPS) + "---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        by = {int(k): v for k, v in r["ms_by_warps"].items()}
        best = min(by.values())
        cells = [f"**{by[n]:.3f}**" if by[n] == best else f"{by[n]:.3f}" for n in WARPS]
        rolled = f"{r['rolled_ms']:.3f}" if "rolled_ms" in r else "—"
        lines.append(f"| {r['shape']} | {r['site']} | " + " | ".join(cells) + f" | {r['product_ms']:.3f} "
                     f"({r['product_warps']}) | {rolled} | {r['cast_ms']:.3f} | {r['tb_s']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    filters = {"only": "only the sites whose names contain this (repeatable; say 'V:')"}
    return run_kernel_bench("tests.benchmarks.bench_row_kernels", __doc__.splitlines()[0], measure, markdown, argv,
                            filters)  # fmt: skip


if __name__ == "__main__":
    main()
