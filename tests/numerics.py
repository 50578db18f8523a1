"""Numerical comparisons shared by the CPU and GPU tests."""

from __future__ import annotations

import torch


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ``||got - ref|| / ||ref||``, computed in float64 on ``ref``'s device.

    Both sides are upcast before subtracting, so the error of a bf16 or float32 result is measured, not the
    rounding of the difference or of the norms in that dtype. ``got`` is moved to ``ref``'s device, so a GPU
    result compares directly against a float64 reference built on the CPU. The shapes broadcast as in ``-``.
    """
    ref = ref.double()
    got = got.to(device=ref.device, dtype=torch.float64)
    return ((got - ref).norm() / ref.norm()).item()


def rms_norm_rope_f64(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, eps: float = 1e-6
) -> torch.Tensor:
    """Wan's query/key RMSNorm then rotary embedding in float64: normalise, weight, then rotate the interleaved
    pairs of every head. ``x`` [B, S, dim] -> [B, S, heads, head_dim]."""
    xd = x.double()
    n = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    n = n.unflatten(-1, (num_heads, -1, 2))
    c, s = cos.double()[None, :, None, :], sin.double()[None, :, None, :]
    return torch.stack((n[..., 0] * c - n[..., 1] * s, n[..., 0] * s + n[..., 1] * c), -1).flatten(-2)
