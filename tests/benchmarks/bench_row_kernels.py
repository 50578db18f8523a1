"""DAX's per-row kernels before and after they held their rows in chunks, site by site, in one run.

    python -m tests.benchmarks.bench_row_kernels --out docs/benchmarks/row_kernels_h200

At Wan's shapes (1.3B: 32,760 tokens x 1536, FFN 8960, 12 heads; 14B: 75,600 x 5120, FFN 13824, 40 heads), the
sites that quantize for the 8-bit linears and SageAttention2: GELU with ffn.2's per-token FP8 quantization, the
modulated LayerNorm with the self-attention input's, and SageAttention2's Q (Wan's RMSNorm across heads, the rotary
embedding, per-thread int8). Variants (ms per call, median; the bandwidth of the site's least traffic, one read and
one write):

- ``before``: one row (Q: two rows, every head) a program, held whole in registers, padded to a power of two (a copy
  of the kernels as they were, kept here to measure against);
- ``product``: DAX's kernels now (``fused_quant``, ``fused_ops``, ``sage_inputs``): the row CHUNK values (Q: a few
  heads) at a time, a pass for its statistics and one that writes (the later reads hit L2);
- ``product, reciprocal`` (GELU only): the kernel before its amax came from the row's max, multiplying by the
  reciprocal of the row's scale instead of an IEEE division;
  ``+ one correction``: then one Markstein step (two FMAs) and a zero given ``y``'s sign, which gives the correctly
  rounded quotient (on an H200 every code equal to ``before``'s; without the sign, -0 was written as +0 where GELU
  underflows). Triton's interpreter cannot check it: its ``fma`` rounds the product and the sum apart;
- ``product, N values at a time`` (GELU and the norm): the product's kernel holding N values of the row at a time
  instead of its own (``ROW_CHUNK``, 512; GELU's ``GELU_CHUNK``, 1024), its warps tuned from 1 to 16: whether more
  bytes in flight per program (16-byte loads for every thread at 4 warps or more) close the distance to the cast's
  bandwidth;
- ``amax from the row's max`` (GELU): the product's ``gelu_amax`` (the first pass reads the row's max alone and GELU
  is computed once per value instead of twice), then an IEEE division per value or the reciprocal of the scale;
- ``cast``: a load and an fp8 cast of the same bytes, no reduction: the bandwidth this GPU gives such a kernel.

Each variant's codes are compared with ``before``'s (the fraction equal).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from dax_core.attention import sage_inputs
from dax_core.attention.sage_inputs import INT8_EPS, _int8_codes, _rounded
from dax_core.attention.sage_layout import query_scale_count
from dax_core.bench.timing import median, timed
from dax_core.models import fused_ops, fused_quant
from dax_core.models.fused_quant import ROW_CHUNK, SCALE_FLOOR, gelu_amax, gelu_tanh, quantize_rows
from tests.benchmarks.common import run_kernel_bench

log = logging.getLogger("bench_row_kernels")
E4M3 = torch.float8_e4m3fn
QMAX = tl.constexpr(448.0)  # a global a Triton kernel reads must be a constexpr
SHAPES = {"1.3b": (32760, 1536, 8960, 12), "14b": (75600, 5120, 13824, 40)}


def _tuned(kernel, warps: tuple[int, ...], key: list[str]):
    return triton.autotune(configs=[triton.Config({}, num_warps=w) for w in warps], key=key)(kernel)


@triton.jit
def _quantize_whole_row(y, mask, q_ptrs, s_ptr):
    """The one-pass kernels' end: the row's scale and codes from all of its values at once, in registers."""
    amax = tl.max(tl.where(mask, tl.abs(y), 0.0), axis=0)
    s = tl.math.div_rn(tl.maximum(amax, SCALE_FLOOR), QMAX)
    v = tl.minimum(tl.maximum(tl.math.div_rn(y, s), -QMAX), QMAX)
    tl.store(q_ptrs, v.to(q_ptrs.dtype.element_ty), mask=mask)
    tl.store(s_ptr, s)


@triton.jit
def _gelu_quant_before(x_ptr, q_ptr, s_ptr, width, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    x = tl.load(x_ptr + row * width + cols, mask=mask, other=0.0)
    y = gelu_tanh(x.to(tl.float32)).to(x.dtype).to(tl.float32)
    _quantize_whole_row(y, mask, q_ptr + row * width + cols, s_ptr + row)


@triton.jit
def _gelu_quant_reciprocal(x_ptr, q_ptr, s_ptr, width, CHUNK: tl.constexpr, CORRECT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * width
    s = tl.math.div_rn(tl.maximum(fused_quant._amax_pass(x_ptr, row * width, width, True, CHUNK), SCALE_FLOOR), QMAX)
    r = tl.math.div_rn(1.0, s)
    for c in range(0, width, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        x = tl.load(base + cols, mask=cols < width, other=0.0)
        y = gelu_tanh(x.to(tl.float32)).to(x.dtype).to(tl.float32)
        v = y * r
        if CORRECT:  # Markstein: with r = RN(1/s) and v within an ulp of y / s, RN(v + r (y - v s)) is RN(y / s)
            v = tl.fma(tl.fma(-v, s, y), r, v)
            # up to the sign of a zero: y = -0 (GELU below about -5) gives -0 + r (+0) = +0; the quotient is -0
            sign = (y.to(tl.uint32, bitcast=True) & 0x80000000).to(tl.float32, bitcast=True)
            v = tl.where(v == 0.0, sign, v)
        v = tl.minimum(tl.maximum(v, -QMAX), QMAX)
        tl.store(q_ptr + row * width + cols, v.to(q_ptr.dtype.element_ty), mask=cols < width)
    tl.store(s_ptr + row, s)


@triton.jit
def _gelu_quant_from_max(x_ptr, q_ptr, s_ptr, width, CHUNK: tl.constexpr, RECIPROCAL: tl.constexpr):
    # the product's amax (``gelu_amax``: the row's max alone, GELU once per value), then an IEEE division per value
    # or the reciprocal
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * width
    amax = gelu_amax(x_ptr, row * width, width, CHUNK)
    s = tl.math.div_rn(tl.maximum(amax, SCALE_FLOOR), QMAX)
    r = tl.math.div_rn(1.0, s)
    for c in range(0, width, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        x = tl.load(base + cols, mask=cols < width, other=0.0)
        y = gelu_tanh(x.to(tl.float32)).to(x.dtype).to(tl.float32)
        v = y * r if RECIPROCAL else tl.math.div_rn(y, s)
        v = tl.minimum(tl.maximum(v, -QMAX), QMAX)
        tl.store(q_ptr + row * width + cols, v.to(q_ptr.dtype.element_ty), mask=cols < width)
    tl.store(s_ptr + row, s)


@triton.jit
def _norm_quant_before(x_ptr, shift_ptr, scale_ptr, q_ptr, s_ptr, dim, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    x = tl.load(x_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / dim
    diff = tl.where(mask, x - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(diff * diff, axis=0) / dim + eps)
    shift = tl.load(shift_ptr + cols, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + cols, mask=mask, other=0.0)
    y = (diff * rstd * (1.0 + scale) + shift).to(x_ptr.dtype.element_ty).to(tl.float32)
    _quantize_whole_row(y, mask, q_ptr + row * dim + cols, s_ptr + row)


@triton.jit
def _query_before(x_ptr, w_ptr, cos_ptr, sin_ptr, q_ptr, scale_ptr, tokens, heads, n_scales, eps,
                  HEADS: tl.constexpr, HALF: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    token = (pid // 8) * 16 + pid % 8 + 8 * tl.arange(0, 2)
    valid = token < tokens
    dt = x_ptr.dtype.element_ty
    h = tl.arange(0, HEADS)[None, :, None]
    dim = heads * 2 * HALF
    mask = valid[:, None, None] & (h < heads)
    cols = h * (2 * HALF) + tl.arange(0, 2 * HALF)[None, None, :]
    offsets = (b * tokens + token)[:, None, None] * dim + cols
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(tl.sum(x * x, axis=2), axis=1) / dim + eps)[:, None, None]
    w = tl.load(w_ptr + cols, mask=h < heads, other=0.0).to(tl.float32)
    y = _rounded(_rounded(x * rstd, dt) * w, dt)
    y0, y1 = tl.split(tl.reshape(y, (2, HEADS, HALF, 2)))
    angle = token[:, None, None] * HALF + tl.arange(0, HALF)[None, None, :]
    c = tl.load(cos_ptr + angle, mask=valid[:, None, None], other=0.0)
    s = tl.load(sin_ptr + angle, mask=valid[:, None, None], other=0.0)
    y = tl.interleave(_rounded(y0 * c - y1 * s, dt), _rounded(y0 * s + y1 * c, dt))
    scale = tl.max(tl.max(tl.abs(y), axis=2), axis=0) / 127.0 + INT8_EPS
    tl.store(q_ptr + offsets, _int8_codes(y, scale[None, :, None]), mask=mask)
    hh = tl.arange(0, HEADS)
    tl.store(scale_ptr + (b * heads + hh) * n_scales + pid, scale, mask=hh < heads)


@triton.jit
def _cast(x_ptr, q_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n, other=0.0).to(tl.float32)
    tl.store(q_ptr + i, tl.minimum(tl.maximum(x, -QMAX), QMAX).to(q_ptr.dtype.element_ty), mask=i < n)


_GELU_BEFORE = _tuned(_gelu_quant_before, (4, 8, 16, 32), ["width"])
CHUNKS = (1024, 2048)
_ROWS_CHUNKED = _tuned(fused_quant._quantize_rows_kernel, (1, 2, 4, 8, 16), ["width", "GELU", "CHUNK"])
_NORM_CHUNKED = _tuned(fused_ops._norm_kernel, (1, 2, 4, 8, 16), ["dim", "RESIDUAL", "AFFINE", "QUANT", "CHUNK"])
_GELU_RECIPROCAL = _tuned(_gelu_quant_reciprocal, (1, 2, 4, 8), ["width"])
_GELU_FROM_MAX = _tuned(_gelu_quant_from_max, (1, 2, 4, 8, 16), ["width", "CHUNK", "RECIPROCAL"])
_NORM_BEFORE = _tuned(_norm_quant_before, (4, 8, 16), ["dim"])
_QUERY_BEFORE = _tuned(_query_before, (4, 8, 16), ["heads"])


def _writing(rows: int, width: int, device, launch: Callable) -> Callable:
    """A variant: ``launch(q, s)`` writing a fresh [rows, width] of e4m3 codes and [rows, 1] scales, returned."""

    def run():
        q, s = torch.empty(rows, width, device=device, dtype=E4M3), torch.empty(rows, 1, device=device)
        launch(q, s)
        return q, s

    return run


def gelu_variants(x: torch.Tensor) -> dict[str, Callable]:
    rows, width = x.shape

    def variant(launch: Callable) -> Callable:
        return _writing(rows, width, x.device, launch)

    def reciprocal(correct: bool) -> Callable:
        return variant(lambda q, s: _GELU_RECIPROCAL[(rows,)](x, q, s, width, CHUNK=ROW_CHUNK, CORRECT=correct))

    def chunked(chunk: int) -> Callable:
        flags = {"QMAX": 448.0, "ROUND": False, "GELU": True, "CHUNK": chunk}
        return variant(lambda q, s: _ROWS_CHUNKED[(rows,)](x, q, s, width, **flags))

    def from_max(chunk: int, reciprocal: bool) -> Callable:
        return variant(lambda q, s: _GELU_FROM_MAX[(rows,)](x, q, s, width, CHUNK=chunk, RECIPROCAL=reciprocal))

    before = variant(lambda q, s: _GELU_BEFORE[(rows,)](x, q, s, width, BLOCK=triton.next_power_of_2(width)))
    return {"before": before, "product": lambda: quantize_rows(x, E4M3, gelu=True, tuned=True),
            **{f"product, {c} values at a time": chunked(c) for c in CHUNKS},
            "product, reciprocal": reciprocal(False), "product, reciprocal + one correction": reciprocal(True),
            **{f"amax from the row's max, {c} at a time{', reciprocal' if r else ''}": from_max(c, r)
               for c in (ROW_CHUNK, 1024) for r in (False, True)},
            "cast (no reduction)": cast_variant(x)}  # fmt: skip


def norm_variants(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> dict[str, Callable]:
    rows, dim = x.shape[1], x.shape[2]

    def product():
        _, q, s = fused_ops.norm_quantized(x, None, None, shift, scale, 1e-6, False, E4M3)
        return q, s

    def chunked(chunk: int) -> Callable:  # norm_quantized's launch (no residual, modulation, codes only)
        flags = {"RESIDUAL": fused_ops.NO_RESIDUAL, "AFFINE": False, "QUANT": True, "QMAX": 448.0, "ROUND": False,
                 "CHUNK": chunk, "STORE": False}  # fmt: skip
        args = (x, x, x, x, shift, scale, x)  # x, r, gate, stream, shift, scale, out: only x and the modulation read
        return _writing(rows, dim, x.device, lambda q, s: _NORM_CHUNKED[(rows,)](*args, q, s, rows, dim, 1e-6, **flags))

    before = _writing(rows, dim, x.device, lambda q, s: _NORM_BEFORE[(rows,)](
        x, shift, scale, q, s, dim, 1e-6, BLOCK=triton.next_power_of_2(dim)))  # fmt: skip
    return {"before": before, "product": product, **{f"product, {c} values at a time": chunked(c) for c in CHUNKS},
            "cast (no reduction)": cast_variant(x)}  # fmt: skip


def query_variants(x: torch.Tensor, w: torch.Tensor, rope, heads: int) -> dict[str, Callable]:
    b, s, dim = x.shape

    def before():
        n = query_scale_count(s)
        codes = torch.empty(b, s, heads, dim // heads, device=x.device, dtype=torch.int8)
        scale = torch.empty(b, heads, n, device=x.device)
        _QUERY_BEFORE[(n, b)](x, w, rope[0], rope[1], codes, scale, s, heads, n, 1e-6,
                              HEADS=triton.next_power_of_2(heads), HALF=dim // heads // 2)  # fmt: skip
        return codes, scale

    return {"before": before, "product": lambda: sage_inputs.query(x, w, rope, heads, 1e-6)}


def cast_variant(x: torch.Tensor) -> Callable:
    n = x.numel()
    q = torch.empty(n, device=x.device, dtype=E4M3)
    return lambda: _cast[(triton.cdiv(n, 4096),)](x, q, n, BLOCK=4096, num_warps=8)


def measure(reps: int) -> list[dict]:
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    rows_out = []

    def record(shape: str, site: str, variants: dict[str, Callable], traffic: int) -> None:
        ref = None
        for name, fn in variants.items():
            ms = 1000 * median(timed(fn, reps, device, warmup=3))
            got = fn()
            row = {"shape": shape, "site": site, "variant": name, "ms": ms, "tb_s": traffic / ms / 1e9}
            if isinstance(got, tuple):
                q = got[0].view(torch.uint8)
                ref = q if ref is None else ref
                row["codes_equal_to_before"] = (q == ref).float().mean().item()
            rows_out.append(row)
            log.info("%s %s %s: %.3f ms, %.2f TB/s %s", shape, site, name, ms, row["tb_s"],
                     row.get("codes_equal_to_before", ""))  # fmt: skip

    for shape, (tokens, dim, ffn, heads) in SHAPES.items():
        h = (torch.randn(tokens, ffn, generator=g, device=device) * 2).bfloat16()
        record(shape, "GELU + quantization", gelu_variants(h), h.numel() * 3 + tokens * 4)
        del h
        x = torch.randn(1, tokens, dim, generator=g, device=device).bfloat16()
        shift, scale = (0.1 * torch.randn(1, dim, generator=g, device=device) for _ in range(2))
        record(shape, "modulated LayerNorm + quantization", norm_variants(x, shift, scale), x.numel() * 3 + tokens * 4)
        w = (1 + 0.1 * torch.randn(dim, generator=g, device=device)).bfloat16()
        angles = torch.rand(tokens, dim // heads // 2, generator=g, device=device) * 6.3
        record(shape, "Q: RMSNorm + rotary + int8", query_variants(x, w, (angles.cos(), angles.sin()), heads),
               x.numel() * 3)  # fmt: skip
    return rows_out


def markdown(result: dict) -> str:
    lines = [f"# Per-row kernels before and after chunking, on {result['device']}", "",
             f"Command: `{result['command']}` (torch {result['torch']}; median of {result['reps']} calls).", "",
             "| shape | site | variant | ms / call | TB/s | codes equal to before |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        eq = r.get("codes_equal_to_before")
        lines.append(f"| {r['shape']} | {r['site']} | {r['variant']} | {r['ms']:.3f} | {r['tb_s']:.2f} | "
                     f"{'—' if eq is None else f'{eq:.6f}'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    return run_kernel_bench("tests.benchmarks.bench_row_kernels", __doc__.splitlines()[0], measure, markdown, argv)


if __name__ == "__main__":
    main()
