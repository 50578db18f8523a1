"""Triton kernels that quantize activations per row (per token), for the eager FP8 / INT8 linears.

The arithmetic is ``dax_core.quant.numerics.quantize``'s, operation for operation: amax of the row in float32, scale
``max(amax, 1e-12) / qmax`` and reciprocal ``qmax / max(amax, 1e-12)`` with IEEE divisions (``div_rn``: Triton's
``/`` is an approximate division), ``x * reciprocal`` clamped to ``[-qmax, qmax]``, round half to even for int8,
then one cast (float8: round to nearest even, saturating). So the values and scales equal PyTorch's multi-pass
``quantize`` bit for bit, from one read of the input from memory (the later passes find it in L2) and one write of
the 8-bit values. ``row_scale``, ``row_reciprocal`` and ``quantized_values`` are also called by the norm kernels of
``fused_ops``, which quantize the row they have just normalised.

A row is held ``ROW_CHUNK`` values at a time (``GELU_CHUNK`` with GELU), in two passes (its amax, then its codes):
a whole row in registers, padded to a power of two, idled up to 45 % of the lanes at Wan's widths and kept too few
rows in flight. With GELU on 16-bit activations the first pass reads the row's max alone (``gelu_amax``), so GELU
is computed once per value; with the reciprocal, on an H200 at Wan 14B's FFN, 1.39 ms instead of 2.65 ms per call
(an earlier version of ``tests/benchmarks/bench_row_kernels.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# constexpr: read inside the kernels
SCALE_FLOOR = tl.constexpr(1e-12)  # numerics.SCALE_FLOOR: an all-zero row quantizes to zeros
GELU_NEGATIVE_BOUND = tl.constexpr(0.171875)  # above |GELU(x)| for every x < 0 (at most 0.16997), 16-bit rounded
ROUNDING_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: (v + M) - M rounds |v| < 2**22 half to even (float32)
QUANT_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.int8)


@triton.jit
def row_scale(amax, QMAX: tl.constexpr):
    """A row's scale from its amax (float32): ``max(amax, 1e-12) / qmax``, an IEEE division."""
    return tl.math.div_rn(tl.maximum(amax, SCALE_FLOOR), QMAX)


@triton.jit
def row_reciprocal(amax, QMAX: tl.constexpr):
    """What a row's values are multiplied by: ``qmax / max(amax, 1e-12)``, an IEEE division."""
    return tl.math.div_rn(QMAX, tl.maximum(amax, SCALE_FLOOR))


@triton.jit
def quantized_values(y, r, QMAX: tl.constexpr, ROUND: tl.constexpr):
    """``y * r`` (``r``: the row's reciprocal) clamped to [-qmax, qmax], rounded half to even when ``ROUND`` (int8):
    the float32 values whose cast are the codes."""
    v = tl.minimum(tl.maximum(y * r, -QMAX), QMAX)
    if ROUND:
        v = (v + ROUNDING_MAGIC) - ROUNDING_MAGIC
    return v


@triton.jit
def gelu_tanh(x):
    """GELU, tanh approximation, in float32. 1 + tanh(u) = 2 - 2 / (exp(2u) + 1), with u capped where it is 2 in
    float32 already (exp, unlike tanh, exists in Triton's interpreter and on every GPU)."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return 0.5 * x * (2.0 - 2.0 / (tl.exp(2.0 * tl.minimum(u, 20.0)) + 1.0))


@triton.jit
def _activation(x, GELU: tl.constexpr):
    """x (a loaded tile) in float32; with ``GELU``, as nn.GELU on the activation dtype: float32 arithmetic, one
    rounding to that dtype."""
    y = x.to(tl.float32)
    if GELU:
        y = gelu_tanh(y).to(x.dtype).to(tl.float32)
    return y


@triton.jit
def _amax_pass(x_ptr, base, width, GELU: tl.constexpr, CHUNK: tl.constexpr):
    """The amax of a row's (activated) values, CHUNK at a time."""
    acc = tl.zeros((CHUNK,), dtype=tl.float32)
    for c in range(0, width, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        x = tl.load(x_ptr + base + cols, mask=cols < width, other=0.0)
        acc = tl.maximum(acc, tl.abs(_activation(x, GELU)))
    return tl.max(acc, axis=0)


@triton.jit
def gelu_amax(x_ptr, base, width, CHUNK: tl.constexpr):
    """The amax of GELU over a row of 16-bit values (rounded to their dtype), from a pass that reads the row's max
    alone. Where GELU rounded to bf16 or fp16 reaches GELU_NEGATIVE_BOUND, no smaller x >= 0 has a larger GELU, and
    below 0 |GELU| stays under that bound (exhaustive tests check every value, in the interpreter and on the GPU),
    so when GELU of the row's max reaches the bound it is the amax; a row of small values takes a pass over every
    value's GELU."""
    top = tl.zeros((CHUNK,), dtype=tl.float32)
    for c in range(0, width, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        top = tl.maximum(top, tl.load(x_ptr + base + cols, mask=cols < width, other=0.0).to(tl.float32))
    amax = gelu_tanh(tl.max(top, axis=0)).to(x_ptr.dtype.element_ty).to(tl.float32)
    if amax < GELU_NEGATIVE_BOUND:
        amax = _amax_pass(x_ptr, base, width, True, CHUNK)
    return amax


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, scale_ptr, width, QMAX: tl.constexpr, ROUND: tl.constexpr, GELU: tl.constexpr, CHUNK: tl.constexpr
):  # fmt: skip
    # One row, CHUNK values at a time: a pass for its amax, then one (reading the row again, from L2) that writes
    # the codes.
    row = tl.program_id(0).to(tl.int64)
    base = row * width
    if GELU and x_ptr.dtype.element_ty != tl.float32:
        amax = gelu_amax(x_ptr, base, width, CHUNK)
    else:  # float32 GELU has no rounding to keep it monotone: every value's
        amax = _amax_pass(x_ptr, base, width, GELU, CHUNK)
    r = row_reciprocal(amax, QMAX)
    for c in range(0, width, CHUNK):
        cols = c + tl.arange(0, CHUNK)
        x = tl.load(x_ptr + base + cols, mask=cols < width, other=0.0)
        v = quantized_values(_activation(x, GELU), r, QMAX, ROUND)
        tl.store(q_ptr + base + cols, v.to(q_ptr.dtype.element_ty), mask=cols < width)
    tl.store(scale_ptr + row, row_scale(amax, QMAX))


ROW_CHUNK = 512
"""Values of a row the row quantizer holds at a time (Wan's widths are multiples of it, or nearly: 8960)."""
GELU_CHUNK = 1024
"""The same with GELU (on an H200, three runs at 14B: 1.34-1.45 ms at 1024 values, 1.30-1.51 ms at 512, level within
their spread; 1024 was the faster at 1.3B in two of them)."""


def row_warps(width: int, gelu: bool) -> int:
    """Warps per row of the row quantizer, as measured on an H200 at Wan's widths (``bench_row_kernels``: each
    width's fastest of 1 to 16 warps): fixed, not tuned at the first call, so that a new process compiles one kernel
    per width, not one per candidate, and every GPU reduces a row in the same order."""
    if gelu:  # 1 to 8 warps within 3 % of each other at 14B; 4 the fastest at 1.3B
        return 4
    return 4 if width > 2048 else 1  # 14B: 0.315 ms at 4 against 0.404 at 2; 1.3B: 0.046 at 1, 0.056 at 4


def quant_constants(dtype: torch.dtype) -> tuple[float, bool]:
    """(qmax, round half to even before the cast) of a quantized dtype."""
    if dtype == torch.int8:
        return 127.0, True
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return float(torch.finfo(dtype).max), False
    raise ValueError(f"no per-row quantization kernel for {dtype}; these quantize to {QUANT_DTYPES}")


def empty_quantized(
    rows: int, width: int, dtype: torch.dtype, device: torch.device, storage: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output buffers: q [rows, width] of ``dtype`` (or ``storage``) and float32 scales [rows, 1]."""
    q = torch.empty(rows, width, device=device, dtype=storage or dtype)
    return q, torch.empty(rows, 1, device=device, dtype=torch.float32)


def quantize_rows(
    x: torch.Tensor,
    dtype: torch.dtype,
    gelu: bool = False,
    *,
    storage: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``numerics.quantize(x, dtype, per_row=True)`` of a 2-d ``x`` in one kernel; with ``gelu``, of
    ``GELU_tanh(x)`` rounded to ``x.dtype`` (what ``nn.GELU(approximate="tanh")`` returns) without writing it.

    ``storage`` keeps the clamped, rounded values in another dtype instead of casting them (Triton's interpreter
    converts float32 to float8 wrongly at binade edges; the CPU tests cast with PyTorch instead).
    """
    if x.ndim != 2:
        raise ValueError(f"quantize_rows takes [rows, width], got {tuple(x.shape)}")
    rows, width = x.shape
    qmax, rounding = quant_constants(dtype)
    x = x.contiguous()
    q, scale = empty_quantized(rows, width, dtype, x.device, storage)
    if rows:
        flags = {"QMAX": qmax, "ROUND": rounding, "GELU": gelu, "CHUNK": GELU_CHUNK if gelu else ROW_CHUNK}
        _quantize_rows_kernel[(rows,)](x, q, scale, width, **flags, num_warps=row_warps(width, gelu))
    return q, scale
