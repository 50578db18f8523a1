"""``sdpa_flash``: PyTorch SDPA pinned to its built-in FlashAttention 2 kernel."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.nn.attention import SDPBackend

from .registry import AttentionBackend, BoundAttention, register
from .sdpa import flash_lse, pinned_forward, probe_pinned


def _check() -> str | None:
    if not torch.cuda.is_available():
        return "PyTorch's flash attention kernel needs a CUDA GPU; use sdpa"
    if not torch.backends.cuda.is_flash_attention_available():
        return f"this PyTorch build ({torch.__version__}) was built without flash attention; use sdpa_cudnn or sdpa"
    return None


def _bind(device: torch.device, dtype: torch.dtype, options: Mapping[str, str]) -> BoundAttention:
    probe_pinned("sdpa_flash", SDPBackend.FLASH_ATTENTION, device, dtype)
    return BoundAttention(
        backend="sdpa_flash",
        kernel="PyTorch SDPA pinned to its flash attention kernel",
        run=pinned_forward(SDPBackend.FLASH_ATTENTION),
        run_lse=flash_lse,
    )


SDPA_FLASH = register(
    AttentionBackend(
        name="sdpa_flash",
        description="PyTorch SDPA pinned to its FlashAttention 2 kernel (torch.nn.attention.sdpa_kernel)",
        check=_check,
        binder=_bind,
        offers_lse=True,
    )
)
