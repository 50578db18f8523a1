"""Element-wise pieces of the Wan block, written once in PyTorch.

Wan keeps norms, modulation and rotary embeddings in float32; these functions do the arithmetic in
float32 and store the result in the activation dtype, so the residual stream costs bf16 bandwidth.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
import torch.nn.functional as F


@functools.cache
def _triton_ops() -> ModuleType | None:
    try:
        from . import fused_ops
    except ImportError:  # no Triton: the PyTorch path below serves
        return None
    return fused_ops


def _fused(x: torch.Tensor) -> ModuleType | None:
    """The Triton kernels for eager CUDA tensors; under torch.compile the PyTorch path is traced and fused."""
    if not x.is_cuda or torch.compiler.is_compiling():
        return None
    return _triton_ops()


def _fused_modulation(x: torch.Tensor, modulation: torch.Tensor) -> ModuleType | None:
    """``_fused`` for x [B, S, D] with a per-batch-row modulation [B, 1, D], what the kernels read; a modulation per
    token [B, S, D] or per group of tokens (x [B, N, S / N, D], modulation [B, N, 1, D]: Wan2.2's timestep per latent
    frame) takes the PyTorch path, which broadcasts any of them."""
    return _fused(x) if x.ndim == 3 and modulation.ndim == 3 and modulation.shape[1] == 1 else None


def row_quantizer(x: torch.Tensor) -> ModuleType | None:
    """The one-pass per-row quantization kernels (``fused_quant``) for eager CUDA tensors; None where
    ``dax_core.quant.numerics.quantize`` serves (the CPU, and torch.compile, which fuses that itself)."""
    fused = _fused(x)
    return None if fused is None else fused.fused_quant


def modulated_layer_norm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float, quantize: torch.dtype | None = None
) -> torch.Tensor:
    """``LayerNorm(x) * (1 + scale) + shift`` in float32, returned in ``x.dtype``.

    x: [B, S, D]; shift, scale: [B, 1, D] float32 (or any shapes that broadcast: ``_fused_modulation``).
    ``quantize``: the dtype the 8-bit linear layers fed by the output quantize it to, per row; the fused kernel then
    writes that quantization too (``prequantized``).
    """
    if (fused := _fused_modulation(x, shift)) is not None:
        return fused.modulated_layer_norm(x, shift, scale, eps, quantize)
    normed = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return torch.addcmul(shift, normed, 1 + scale).to(x.dtype)


def add_modulated_layer_norm(
    x: torch.Tensor,
    r: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float,
    quantize: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``x + r`` in ``x.dtype``, its ``modulated_layer_norm``): one pass on CUDA."""
    if (fused := _fused_modulation(x, shift)) is not None:
        return fused.add_modulated_layer_norm(x, r, shift, scale, eps, quantize)
    x = x + r
    return x, modulated_layer_norm(x, shift, scale, eps)


def gated_residual_layer_norm(
    x: torch.Tensor,
    y: torch.Tensor,
    gate: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    quantize: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(``gated_residual(x, y, gate)``, its ``affine_layer_norm``): one pass on CUDA."""
    if (fused := _fused_modulation(x, gate)) is not None:
        return fused.gated_residual_layer_norm(x, y, gate, weight, bias, eps, quantize)
    x = gated_residual(x, y, gate)
    return x, affine_layer_norm(x, weight, bias, eps)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + y * gate`` in float32, returned in ``x.dtype``. gate: [B, 1, D] float32 (or any shape that broadcasts)."""
    if (fused := _fused_modulation(x, gate)) is not None:
        return fused.gated_residual(x, y, gate)
    return torch.addcmul(x.float(), y.float(), gate).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Wan's RMSNorm: normalise in float32, cast back, then apply the weight."""
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
    return normed * weight.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` [B, S, H, D] by angles given as cos/sin [S, D/2] (float32)."""
    xf = x.float().unflatten(-1, (-1, 2))
    x0, x1 = xf.unbind(-1)
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1)
    return out.flatten(-2).to(x.dtype)


def rms_norm_rope(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, eps: float
) -> torch.Tensor:
    """RMSNorm across all heads of x [B, S, H*D], then rotary embedding per head: returns [B, S, H, D]."""
    if (fused := _fused(x)) is not None:
        return fused.rms_norm_rope(x, weight, cos, sin, num_heads, eps)
    normed = rms_norm(x, weight, eps).unflatten(-1, (num_heads, -1))
    return apply_rope(normed, cos, sin)


def affine_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm with weight and bias. PyTorch's kernel accumulates half-precision inputs in float32 and
    rounds once, which is Wan's float32 LayerNorm followed by a cast, in one pass."""
    return F.layer_norm(x, (x.shape[-1],), weight.to(x.dtype), bias.to(x.dtype), eps)
