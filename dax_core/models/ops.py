"""Element-wise pieces of the Wan block, written once in PyTorch.

Wan keeps norms, modulation and rotary embeddings in float32; these functions do the arithmetic in
float32 and store the result in the activation dtype, so the residual stream costs bf16 bandwidth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def modulated_layer_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """``LayerNorm(x) * (1 + scale) + shift`` in float32, returned in ``x.dtype``.

    x: [B, S, D]; shift, scale: [B, 1, D] float32.
    """
    normed = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
    return torch.addcmul(shift, normed, 1 + scale).to(x.dtype)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + y * gate`` in float32, returned in ``x.dtype``. gate: [B, 1, D] float32."""
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
    normed = rms_norm(x, weight, eps).unflatten(-1, (num_heads, -1))
    return apply_rope(normed, cos, sin)


def layer_norm_f32(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm with optional affine, computed in float32, returned in ``x.dtype``."""
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps).to(x.dtype)
