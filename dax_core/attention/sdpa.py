"""PyTorch scaled_dot_product_attention: PyTorch picks the kernel (cuDNN, flash, memory-efficient, math)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import AttentionBackend, register


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # SDPA wants [B, H, S, D]; the transposes are views, and the fused kernels return an output whose
    # transpose back to [B, S, H, D] is contiguous, so no copy is made on either side.
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


SDPA = register(
    AttentionBackend(
        name="sdpa",
        fn=sdpa_attention,
        description="PyTorch scaled_dot_product_attention (PyTorch chooses the kernel)",
        check=lambda: None,
    )
)
