"""Triton kernels for the element-wise work of a Wan block: one read from memory and one write per tensor.

Each kernel computes exactly what its PyTorch twin in ``ops`` computes (float32 arithmetic, one
rounding to the activation dtype, the same intermediate roundings where Wan has them). They run on
CUDA tensors when Triton is importable; ``ops`` dispatches and keeps the PyTorch path for the CPU.
The norm kernel also adds the residual it follows and, for 8-bit linears, quantizes what it writes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import fused_quant, prequantized
from .fused_quant import ROW_CHUNK, quantized_values, row_reciprocal, row_scale

# what _norm_kernel adds to x before normalising it (constexpr: read inside the kernel)
NO_RESIDUAL, ADD, GATED = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)


@triton.jit
def _stream(x_ptr, r_ptr, gate_ptr, sum_ptr, offsets, gate_offsets, mask, RESIDUAL: tl.constexpr):
    """x, or x + r, or x + r * gate rounded to the residual stream's dtype as stored, in float32."""
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if RESIDUAL != NO_RESIDUAL:
        r = tl.load(r_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        if RESIDUAL == GATED:
            r = r * tl.load(gate_ptr + gate_offsets, mask=mask, other=0.0)
        x = (x + r).to(sum_ptr.dtype.element_ty).to(tl.float32)
    return x


@triton.jit
def _normed(x, mean, rstd, a_ptr, b_ptr, cols, batch_cols, mask, out_dtype: tl.constexpr, AFFINE: tl.constexpr):
    """LayerNorm of stream values x with a per-channel affine (a = weight, b = bias) or a per-batch modulation
    (a = shift, b = scale), rounded to the output dtype, in float32."""
    diff = tl.where(mask, x - mean, 0.0)
    if AFFINE:
        w = tl.load(a_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        y = diff * rstd * w + b
    else:
        shift = tl.load(a_ptr + batch_cols, mask=mask, other=0.0)
        scale = tl.load(b_ptr + batch_cols, mask=mask, other=0.0)
        y = diff * rstd * (1.0 + scale) + shift
    return y.to(out_dtype).to(tl.float32)


@triton.jit
def _restream(x_ptr, sum_ptr, offsets, mask, RESIDUAL: tl.constexpr):
    """The stream values of the first pass, in float32, for the later ones: as stored (the sum, rounded) or x."""
    if RESIDUAL != NO_RESIDUAL:
        x = tl.load(sum_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    else:
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return x


@triton.jit
def _norm_kernel(
    x_ptr, r_ptr, gate_ptr, sum_ptr, a_ptr, b_ptr, out_ptr, q_ptr, q_scale_ptr, tokens, dim, eps,
    RESIDUAL: tl.constexpr, AFFINE: tl.constexpr, QUANT: tl.constexpr, QMAX: tl.constexpr, ROUND: tl.constexpr,
    CHUNK: tl.constexpr, UNROLL: tl.constexpr, STORE: tl.constexpr = True,
):  # fmt: skip
    # One row: optionally x + r or x + r * gate (stored: the residual stream), then LayerNorm with a per-batch
    # modulation (a = shift, b = scale) or a per-channel affine (a = weight, b = bias), then optionally the
    # output's per-row quantization. CHUNK values at a time, in passes over the row: the stream and its sum, the sum
    # of squared deviations, (QUANT) the output's amax, then the output and its codes. The row is read from memory
    # once; the later passes read the stream as stored (one tensor, not x and r, and no sum to form again) from L2.
    # STORE off: the output is only quantized. Each pass's loop is unrolled UNROLL times (``unroll``).
    row = tl.program_id(0).to(tl.int64)
    batch = row // tokens
    dt = out_ptr.dtype.element_ty
    acc = tl.zeros((CHUNK,), dtype=tl.float32)
    for c in tl.range(0, dim, CHUNK, loop_unroll_factor=UNROLL):
        cols = c + tl.arange(0, CHUNK)
        mask = cols < dim
        x = _stream(x_ptr, r_ptr, gate_ptr, sum_ptr, row * dim + cols, batch * dim + cols, mask, RESIDUAL)
        if RESIDUAL != NO_RESIDUAL:
            tl.store(sum_ptr + row * dim + cols, x.to(sum_ptr.dtype.element_ty), mask=mask)
        acc += x
    mean = tl.sum(acc, axis=0) / dim
    if RESIDUAL != NO_RESIDUAL:
        tl.debug_barrier()  # the stored stream, written by every thread of the program, is read back below
    acc = tl.zeros((CHUNK,), dtype=tl.float32)
    for c in tl.range(0, dim, CHUNK, loop_unroll_factor=UNROLL):
        cols = c + tl.arange(0, CHUNK)
        mask = cols < dim
        diff = tl.where(mask, _restream(x_ptr, sum_ptr, row * dim + cols, mask, RESIDUAL) - mean, 0.0)
        acc += diff * diff
    rstd = tl.rsqrt(tl.sum(acc, axis=0) / dim + eps)
    r = 1.0
    if QUANT:  # the linear quantizes the output as stored
        acc = tl.zeros((CHUNK,), dtype=tl.float32)
        for c in tl.range(0, dim, CHUNK, loop_unroll_factor=UNROLL):
            cols = c + tl.arange(0, CHUNK)
            mask = cols < dim
            x = _restream(x_ptr, sum_ptr, row * dim + cols, mask, RESIDUAL)
            y = _normed(x, mean, rstd, a_ptr, b_ptr, cols, batch * dim + cols, mask, dt, AFFINE)
            acc = tl.maximum(acc, tl.where(mask, tl.abs(y), 0.0))
        amax = tl.max(acc, axis=0)
        r = row_reciprocal(amax, QMAX)
        tl.store(q_scale_ptr + row, row_scale(amax, QMAX))
    for c in tl.range(0, dim, CHUNK, loop_unroll_factor=UNROLL):
        cols = c + tl.arange(0, CHUNK)
        mask = cols < dim
        x = _restream(x_ptr, sum_ptr, row * dim + cols, mask, RESIDUAL)
        y = _normed(x, mean, rstd, a_ptr, b_ptr, cols, batch * dim + cols, mask, dt, AFFINE)
        if STORE:
            tl.store(out_ptr + row * dim + cols, y.to(dt), mask=mask)
        if QUANT:
            v = quantized_values(y, r, QMAX, ROUND)
            tl.store(q_ptr + row * dim + cols, v.to(q_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gated_residual_kernel(x_ptr, y_ptr, gate_ptr, out_ptr, tokens, dim, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    batch = row // tokens
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < dim
    x = tl.load(x_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + batch * dim + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * dim + cols, (x + y * gate).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_rope_kernel(
    x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, tokens, half_dim, half_head, eps, HALF_BLOCK: tl.constexpr
):  # fmt: skip
    # One row of dim = 2 * half_dim channels, seen as interleaved (even, odd) pairs.
    row = tl.program_id(0).to(tl.int64)
    token = row % tokens
    pairs = tl.arange(0, HALF_BLOCK)
    mask = pairs < half_dim
    base = x_ptr + row * 2 * half_dim
    x0 = tl.load(base + 2 * pairs, mask=mask, other=0.0).to(tl.float32)
    x1 = tl.load(base + 2 * pairs + 1, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt((tl.sum(x0 * x0, axis=0) + tl.sum(x1 * x1, axis=0)) / (2 * half_dim) + eps)
    dt = out_ptr.dtype.element_ty
    # Wan: normalise in float32, round to the activation dtype, multiply by the weight in that dtype.
    w0 = tl.load(w_ptr + 2 * pairs, mask=mask, other=0.0)
    w1 = tl.load(w_ptr + 2 * pairs + 1, mask=mask, other=0.0)
    n0 = ((x0 * rstd).to(dt).to(tl.float32) * w0.to(tl.float32)).to(dt).to(tl.float32)
    n1 = ((x1 * rstd).to(dt).to(tl.float32) * w1.to(tl.float32)).to(dt).to(tl.float32)
    j = pairs % half_head
    c = tl.load(cos_ptr + token * half_head + j, mask=mask, other=0.0)
    s = tl.load(sin_ptr + token * half_head + j, mask=mask, other=0.0)
    out = out_ptr + row * 2 * half_dim
    tl.store(out + 2 * pairs, (n0 * c - n1 * s).to(dt), mask=mask)
    tl.store(out + 2 * pairs + 1, (n0 * s + n1 * c).to(dt), mask=mask)


def _warps(block: int) -> int:
    return max(4, min(16, block // 512))


def unroll(width: int, chunk: int) -> int:
    """How many times the norm kernel unrolls each pass's loop over a row ``chunk`` values at a time: once per chunk
    of the row, at most 16. Rolled (ptxas unrolls it four times), a pass waits on a few loads at a time; unrolled,
    it issues the row's loads together: on an H200 at 14B, 0.99 -> 0.89 ms at the residual + modulated LayerNorm,
    1.07 -> 0.97 ms at the gated residual + LayerNorm, 0.75 -> 0.70 ms without a residual; at 1.3B 0.134 -> 0.127,
    0.133 -> 0.137 and 0.108 -> 0.102 ms (``tests/benchmarks/bench_row_kernels.py``)."""
    return max(1, min(16, triton.cdiv(width, chunk)))


def norm_warps(dim: int) -> int:
    """Warps per row of the norm kernel, as measured on an H200 at Wan's widths (``bench_row_kernels``: each
    width's fastest of 1 to 16 warps): fixed, not tuned at the first call, so that a new process compiles one kernel
    per site, not one per candidate, and every GPU reduces a row in the same order."""
    return 2 if dim <= 2048 else 4  # each site's fastest: 1.3B's 1536 at 2, 14B's 5120 at 4


def _norm(
    x: torch.Tensor,
    r: torch.Tensor | None,
    gate: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    affine: bool,
    quantize: torch.dtype | None,
    storage: torch.dtype | None,
    store: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(stream, out, q, q_scale): each None where not written."""
    batch, tokens, dim = x.shape
    x = x.contiguous()
    mode = NO_RESIDUAL if r is None else ADD if gate is None else GATED
    stream = None if r is None else torch.empty_like(x)
    out = torch.empty_like(x) if store else None
    rows = batch * tokens
    if quantize is not None:
        qmax, rounding = fused_quant.quant_constants(quantize)
        q, q_scale = fused_quant.empty_quantized(rows, dim, quantize, x.device, storage)
    else:
        qmax, rounding, q, q_scale = 1.0, False, None, None
    args = (
        x, x if r is None else r.contiguous(), x if gate is None else gate.float().contiguous(),
        x if stream is None else stream, a.contiguous(), b.contiguous(), x if out is None else out,
        x if q is None else q, x if q_scale is None else q_scale, tokens, dim, eps,
    )  # fmt: skip
    flags = {"RESIDUAL": mode, "AFFINE": affine, "QUANT": quantize is not None, "QMAX": qmax, "ROUND": rounding,
             "CHUNK": ROW_CHUNK, "UNROLL": unroll(dim, ROW_CHUNK), "STORE": store}  # fmt: skip
    _norm_kernel[(rows,)](*args, **flags, num_warps=norm_warps(dim))
    return stream, out, q, q_scale


def _attached(stream, out, q, q_scale, quantize) -> tuple[torch.Tensor | None, torch.Tensor]:
    if quantize is not None:
        prequantized.attach(out, quantize, q, q_scale)
    return stream, out


def norm_quantized(
    x: torch.Tensor,
    r: torch.Tensor | None,
    gate: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    affine: bool,
    quantize: torch.dtype,
    *,
    storage: torch.dtype | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One of the three norm sites (``modulated_layer_norm``: no ``r``; ``add_modulated_layer_norm``: ``r``;
    ``gated_residual_layer_norm``: ``r``, ``gate``, ``affine``) writing only the residual stream (when there is one)
    and the per-row quantization of its output: (stream or None, q [rows, dim], scale [rows, 1]). ``a``, ``b`` as
    the functions below pass them."""
    stream, _, q, q_scale = _norm(x, r, gate, a, b, eps, affine, quantize, storage, store=False)
    assert q is not None and q_scale is not None
    return stream, q, q_scale


def modulated_layer_norm(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    quantize: torch.dtype | None = None,
    *,
    storage: torch.dtype | None = None,
) -> torch.Tensor:
    """``ops.modulated_layer_norm``; with ``quantize``, the output carries its per-row quantization
    (``prequantized``). ``storage``: as in ``fused_quant.quantize_rows``."""
    return _attached(*_norm(x, None, None, shift.float(), scale.float(), eps, False, quantize, storage), quantize)[1]


def add_modulated_layer_norm(
    x: torch.Tensor,
    r: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    quantize: torch.dtype | None = None,
    *,
    storage: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ops.add_modulated_layer_norm`` in one pass: (x + r, its modulated LayerNorm)."""
    stream, out = _attached(*_norm(x, r, None, shift.float(), scale.float(), eps, False, quantize, storage), quantize)
    assert stream is not None
    return stream, out


def gated_residual_layer_norm(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    quantize: torch.dtype | None = None,
    *,
    storage: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ops.gated_residual_layer_norm`` in one pass: (x + y * gate, its affine LayerNorm)."""
    norm = _norm(x, y, gate, weight.to(x.dtype), bias.to(x.dtype), eps, True, quantize, storage)
    stream, out = _attached(*norm, quantize)
    assert stream is not None
    return stream, out


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    b, s, d = x.shape
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    block = min(2048, triton.next_power_of_2(d))
    _gated_residual_kernel[(b * s, triton.cdiv(d, block))](
        x, y, gate.float().contiguous(), out, s, d, BLOCK=block, num_warps=4
    )
    return out


def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, eps: float
) -> torch.Tensor:
    b, s, d = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    half_block = triton.next_power_of_2(d // 2)
    _rms_norm_rope_kernel[(b * s,)](
        x, weight.to(x.dtype).contiguous(), cos.contiguous(), sin.contiguous(), out, s, d // 2,
        d // num_heads // 2, eps, HALF_BLOCK=half_block, num_warps=_warps(half_block * 2),
    )  # fmt: skip
    return out.view(b, s, num_heads, d // num_heads)
