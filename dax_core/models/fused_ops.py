"""Triton kernels for the element-wise work of a Wan block: one read and one write per tensor.

Each kernel computes exactly what its PyTorch twin in ``ops`` computes (float32 arithmetic, one
rounding to the activation dtype, the same intermediate roundings where Wan has them). They run on
CUDA tensors when Triton is importable; ``ops`` dispatches and keeps the PyTorch path for the CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _modulated_layer_norm_kernel(
    x_ptr, shift_ptr, scale_ptr, out_ptr, tokens, dim, eps, BLOCK: tl.constexpr
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    batch = row // tokens
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    x = tl.load(x_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / dim
    diff = tl.where(mask, x - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(diff * diff, axis=0) / dim + eps)
    shift = tl.load(shift_ptr + batch * dim + cols, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + batch * dim + cols, mask=mask, other=0.0)
    y = diff * rstd * (1.0 + scale) + shift
    tl.store(out_ptr + row * dim + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


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


def modulated_layer_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    b, s, d = x.shape
    x = x.contiguous()
    out = torch.empty_like(x)
    block = triton.next_power_of_2(d)
    _modulated_layer_norm_kernel[(b * s,)](
        x, shift.float().contiguous(), scale.float().contiguous(), out, s, d, eps, BLOCK=block, num_warps=_warps(block)
    )
    return out


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
