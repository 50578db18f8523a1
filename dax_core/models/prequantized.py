"""A linear layer's input quantized by the kernel that produced it.

A fused norm kernel (``fused_ops``) that writes a tensor consumed by 8-bit linear layers also writes its per-row
quantization and attaches it to the tensor it returns; each of those layers (``QuantLinear``) takes it instead of
quantizing the tensor again, so self-attention's q, k and v share one quantization made in the norm's own pass.

The attachment describes the tensor's values when it was made: only fresh outputs of the fused kernels carry one,
and the model never modifies those in place. Views and copies carry none (their consumer quantizes them itself).
"""

from __future__ import annotations

import torch

_ATTRIBUTE = "_dax_rows_quantized"


def attach(t: torch.Tensor, dtype: torch.dtype, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Record on ``t`` (shape [..., K]) its per-row quantization to ``dtype``: q [rows, K], scale [rows, 1]."""
    setattr(t, _ATTRIBUTE, (dtype, q, scale))
    return t


def take(t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(q [rows, K], scale [rows, 1]) if ``t`` carries its per-row quantization to ``dtype``, else None."""
    found = getattr(t, _ATTRIBUTE, None)
    if found is None or found[0] != dtype:
        return None
    return found[1], found[2]
