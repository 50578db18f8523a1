"""What limits DAX's per-row kernels (the 8-bit linears' input quantization), measured variant by variant.

    python -m tests.benchmarks.bench_row_kernels --out docs/benchmarks/row_kernels_h200

At Wan's shapes (1.3B: 32,760 tokens x 1536, FFN 8960; 14B: 75,600 x 5120, FFN 13824), the two heaviest sites:
GELU with ffn.2's per-token FP8 quantization, and the modulated LayerNorm with the self-attention input's
quantization. Variants, each against the product's kernel in the same run (ms per call, median, and the bandwidth
of the site's least traffic):

- ``product``: DAX's kernel (one row a program in registers, ``BLOCK = next_power_of_2(width)``, IEEE division of
  every element by the row's scale);
- ``reciprocal``: the same, multiplying by the row's reciprocal scale instead of dividing;
- ``chunked``: the row in chunks of CHUNK values (no lanes wasted to the power of two), one pass for the row's
  statistics and one that recomputes and writes (the second read hits L2), reciprocal scale;
- for SageAttention2's Q (Wan's RMSNorm across heads, the rotary embedding, per-thread int8): ``product``
  (``sage_inputs.query``: two rows and every head a program, ``HEADS = next_power_of_2(heads)``) against
  ``chunked``: the same rows, heads in chunks of a power of two that divides them, a pass for the norm's sum and one
  that writes;
- ``cast``: a load and an fp8 cast of the same bytes, no reduction: the bandwidth this GPU gives such a kernel.

Each variant's codes are compared with the product's (the fraction equal; a reciprocal differs from a division in the
last float32 bit, so a rare code moves one step).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from dax_core.attention import sage_inputs
from dax_core.attention.sage_inputs import INT8_EPS, _int8_codes, _rounded
from dax_core.attention.sage_layout import query_scale_count
from dax_core.bench.timing import device_name, median, timed, write_json
from dax_core.models import fused_ops
from dax_core.models.fused_quant import SCALE_FLOOR, gelu_tanh, quantize_rows

log = logging.getLogger("bench_row_kernels")
E4M3 = torch.float8_e4m3fn
QMAX = 448.0
SHAPES = {"1.3b": (32760, 1536, 8960, 12), "14b": (75600, 5120, 13824, 40)}


@triton.jit
def _gelu_quant_reciprocal(x_ptr, q_ptr, s_ptr, width, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    x = tl.load(x_ptr + row * width + cols, mask=mask, other=0.0)
    y = gelu_tanh(x.to(tl.float32)).to(x.dtype).to(tl.float32)
    amax = tl.max(tl.where(mask, tl.abs(y), 0.0), axis=0)
    s = tl.math.div_rn(tl.maximum(amax, SCALE_FLOOR), QMAX)
    r = tl.math.div_rn(1.0, s)
    v = tl.minimum(tl.maximum(y * r, -QMAX), QMAX)
    tl.store(q_ptr + row * width + cols, v.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + row, s)


@triton.jit
def _gelu_quant_chunked(x_ptr, q_ptr, s_ptr, width, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * width
    acc = tl.zeros((CHUNK,), dtype=tl.float32)
    for c in range(0, width, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        x = tl.load(base + cols, mask=cols < width, other=0.0)
        acc = tl.maximum(acc, tl.abs(gelu_tanh(x.to(tl.float32)).to(x.dtype).to(tl.float32)))
    s = tl.math.div_rn(tl.maximum(tl.max(acc, axis=0), SCALE_FLOOR), QMAX)
    r = tl.math.div_rn(1.0, s)
    for c in range(0, width, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        x = tl.load(base + cols, mask=cols < width, other=0.0)
        y = gelu_tanh(x.to(tl.float32)).to(x.dtype).to(tl.float32)
        v = tl.minimum(tl.maximum(y * r, -QMAX), QMAX)
        tl.store(q_ptr + row * width + cols, v.to(q_ptr.dtype.element_ty), mask=cols < width)
    tl.store(s_ptr + row, s)


@triton.jit
def _norm_quant_chunked(x_ptr, shift_ptr, scale_ptr, q_ptr, s_ptr, dim, eps, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * dim
    acc = tl.zeros((CHUNK,), dtype=tl.float32)
    for c in range(0, dim, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        acc += tl.load(base + cols, mask=cols < dim, other=0.0).to(tl.float32)
    mean = tl.sum(acc, axis=0) / dim
    acc = tl.zeros((CHUNK,), dtype=tl.float32)
    for c in range(0, dim, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        x = tl.load(base + cols, mask=cols < dim, other=0.0).to(tl.float32)
        d = tl.where(cols < dim, x - mean, 0.0)
        acc += d * d
    rstd = tl.rsqrt(tl.sum(acc, axis=0) / dim + eps)
    acc = tl.zeros((CHUNK,), dtype=tl.float32)
    for c in range(0, dim, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        m = cols < dim
        x = tl.load(base + cols, mask=m, other=0.0).to(tl.float32)
        sh = tl.load(shift_ptr + cols, mask=m, other=0.0)
        sc = tl.load(scale_ptr + cols, mask=m, other=0.0)
        y = ((x - mean) * rstd * (1.0 + sc) + sh).to(x_ptr.dtype.element_ty).to(tl.float32)
        acc = tl.maximum(acc, tl.where(m, tl.abs(y), 0.0))
    s = tl.math.div_rn(tl.maximum(tl.max(acc, axis=0), SCALE_FLOOR), QMAX)
    r = tl.math.div_rn(1.0, s)
    for c in range(0, dim, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        m = cols < dim
        x = tl.load(base + cols, mask=m, other=0.0).to(tl.float32)
        sh = tl.load(shift_ptr + cols, mask=m, other=0.0)
        sc = tl.load(scale_ptr + cols, mask=m, other=0.0)
        y = ((x - mean) * rstd * (1.0 + sc) + sh).to(x_ptr.dtype.element_ty).to(tl.float32)
        v = tl.minimum(tl.maximum(y * r, -QMAX), QMAX)
        tl.store(q_ptr + row * dim + cols, v.to(q_ptr.dtype.element_ty), mask=m)
    tl.store(s_ptr + row, s)


@triton.jit
def _query_chunked(x_ptr, w_ptr, cos_ptr, sin_ptr, q_ptr, scale_ptr, tokens, heads, n_scales, eps,
                   CHUNK: tl.constexpr, HALF: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    token = (pid // 8) * 16 + pid % 8 + 8 * tl.arange(0, 2)
    valid = (token < tokens)[:, None, None]
    dim = heads * 2 * HALF
    hh = tl.arange(0, CHUNK)[None, :, None]
    d = tl.arange(0, 2 * HALF)[None, None, :]
    rows = (b * tokens + token)[:, None, None] * dim
    acc = tl.zeros((2, CHUNK, 2 * HALF), dtype=tl.float32)
    for h0 in range(0, heads, CHUNK):
        x = tl.load(x_ptr + rows + (h0 + hh) * (2 * HALF) + d, mask=valid, other=0.0).to(tl.float32)
        acc += x * x
    rstd = tl.rsqrt(tl.sum(tl.sum(acc, axis=2), axis=1) / dim + eps)[:, None, None]
    angle = (token % tokens)[:, None, None] * HALF + tl.arange(0, HALF)[None, None, :]
    c = tl.load(cos_ptr + angle, mask=valid, other=0.0)
    s = tl.load(sin_ptr + angle, mask=valid, other=0.0)
    dt = x_ptr.dtype.element_ty
    for h0 in range(0, heads, CHUNK):
        offsets = rows + (h0 + hh) * (2 * HALF) + d
        x = tl.load(x_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + (h0 + hh) * (2 * HALF) + d).to(tl.float32)
        y = _rounded(_rounded(x * rstd, dt) * w, dt)
        y0, y1 = tl.split(tl.reshape(y, (2, CHUNK, HALF, 2)))
        y = tl.interleave(_rounded(y0 * c - y1 * s, dt), _rounded(y0 * s + y1 * c, dt))
        scale = tl.max(tl.max(tl.abs(y), axis=2), axis=0) / 127.0 + INT8_EPS
        tl.store(q_ptr + offsets, _int8_codes(y, scale[None, :, None]), mask=valid)
        h = h0 + tl.arange(0, CHUNK)
        tl.store(scale_ptr + (b * heads + h) * n_scales + pid, scale)


def query_variants(x: torch.Tensor, w: torch.Tensor, rope, heads: int, warps: int) -> dict:
    b, s, dim = x.shape
    chunk = min(8, heads & -heads)

    def chunked():
        n = query_scale_count(s)
        codes = torch.empty(b, s, heads, dim // heads, device=x.device, dtype=torch.int8)
        scale = torch.empty(b, heads, n, device=x.device)
        _query_chunked[(n, b)](x, w, rope[0], rope[1], codes, scale, s, heads, n, 1e-6, CHUNK=chunk,
                               HALF=dim // heads // 2, num_warps=warps)  # fmt: skip
        return codes, scale

    return {"product": lambda: sage_inputs.query(x, w, rope, heads, 1e-6), f"chunked_{chunk}_w{warps}": chunked}


@triton.jit
def _cast(x_ptr, q_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n, other=0.0).to(tl.float32)
    tl.store(q_ptr + i, tl.minimum(tl.maximum(x, -QMAX), QMAX).to(q_ptr.dtype.element_ty), mask=i < n)


def _out(rows: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty(rows, width, device=device, dtype=E4M3), torch.empty(rows, 1, device=device)


def gelu_variants(x: torch.Tensor, warps: int, chunk: int) -> dict:
    rows, width = x.shape
    block = triton.next_power_of_2(width)

    def reciprocal():
        q, s = _out(rows, width, x.device)
        _gelu_quant_reciprocal[(rows,)](x, q, s, width, BLOCK=block, num_warps=warps)
        return q, s

    def chunked():
        q, s = _out(rows, width, x.device)
        _gelu_quant_chunked[(rows,)](x, q, s, width, CHUNK=chunk, num_warps=4)
        return q, s

    return {"product": lambda: quantize_rows(x, E4M3, gelu=True, tuned=True), f"reciprocal_w{warps}": reciprocal,
            f"chunked_{chunk}": chunked}  # fmt: skip


def norm_variants(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, chunk: int) -> dict:
    rows, dim = x.shape[1], x.shape[2]

    def chunked():
        q, s = _out(rows, dim, x.device)
        _norm_quant_chunked[(rows,)](x, shift, scale, q, s, dim, 1e-6, CHUNK=chunk, num_warps=4)
        return q, s

    def product():
        _, q, s = fused_ops.norm_quantized(x, None, None, shift, scale, 1e-6, False, E4M3)
        return q, s

    return {"product": product, f"chunked_{chunk}": chunked}


def cast_variant(x: torch.Tensor):
    n = x.numel()
    q = torch.empty(n, device=x.device, dtype=E4M3)
    return lambda: _cast[(triton.cdiv(n, 4096),)](x, q, n, BLOCK=4096, num_warps=8)


def measure(reps: int) -> list[dict]:
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(0)
    rows_out = []

    def record(shape: str, site: str, variants: dict, traffic: int) -> None:
        ref = None
        for name, fn in variants.items():
            ms = 1000 * median(timed(fn, reps, device, warmup=3))
            got = fn()
            row = {"shape": shape, "site": site, "variant": name, "ms": ms, "tb_s": traffic / ms / 1e9}
            if isinstance(got, tuple):
                q = got[0].view(torch.uint8)
                ref = q if ref is None else ref
                row["codes_equal_to_product"] = (q == ref).float().mean().item()
            rows_out.append(row)
            log.info("%s %s %s: %.3f ms, %.2f TB/s %s", shape, site, name, ms, row["tb_s"],
                     row.get("codes_equal_to_product", ""))  # fmt: skip

    for shape, (tokens, dim, ffn, heads) in SHAPES.items():
        h = (torch.randn(tokens, ffn, generator=g, device=device) * 2).bfloat16()
        traffic = h.numel() * 3 + tokens * 4
        for chunk in (1024, 2048):
            record(shape, "GELU + quantization", gelu_variants(h, 16, chunk), traffic)
        record(shape, "GELU + quantization", {"reciprocal_w32": gelu_variants(h, 32, 1024)["reciprocal_w32"],
                                              "cast (no reduction)": cast_variant(h)}, traffic)  # fmt: skip
        del h
        x = torch.randn(1, tokens, dim, generator=g, device=device).bfloat16()
        shift, scale = (0.1 * torch.randn(1, dim, generator=g, device=device) for _ in range(2))
        traffic = x.numel() * 3 + tokens * 4
        for chunk in (512, 1024):
            record(shape, "modulated LayerNorm + quantization", norm_variants(x, shift, scale, chunk), traffic)
        record(shape, "modulated LayerNorm + quantization", {"cast (no reduction)": cast_variant(x)}, traffic)
        w = (1 + 0.1 * torch.randn(dim, generator=g, device=device)).bfloat16()
        angles = torch.rand(tokens, dim // heads // 2, generator=g, device=device) * 6.3
        rope = (angles.cos(), angles.sin())
        traffic = x.numel() * 3
        for warps in (4, 8):
            record(shape, "Q: RMSNorm + rotary + int8", query_variants(x, w, rope, heads, warps), traffic)
    return rows_out


def markdown(result: dict) -> str:
    lines = [f"# Per-row kernel variants on {result['device']}", "", f"Command: `{result['command']}`.", "",
             "| shape | site | variant | ms / call | TB/s | codes equal to product |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        eq = r.get("codes_equal_to_product")
        lines.append(f"| {r['shape']} | {r['site']} | {r['variant']} | {r['ms']:.3f} | {r['tb_s']:.2f} | "
                     f"{'—' if eq is None else f'{eq:.6f}'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with torch.inference_mode():
        rows = measure(args.reps)
    result = {"device": device_name(torch.device("cuda")), "torch": torch.__version__,
              "command": "python -m tests.benchmarks.bench_row_kernels " + shlex.join(argv or sys.argv[1:]),
              "rows": rows}  # fmt: skip
    if args.out:
        write_json(args.out.with_suffix(".json"), result)
        args.out.with_suffix(".md").write_text(markdown(result))
    return result


if __name__ == "__main__":
    main()
