"""``sdpa_cudnn``: PyTorch SDPA pinned to cuDNN's fused attention (the fastest exact kernel on Hopper)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.nn.attention import SDPBackend

from .registry import AttentionBackend, BoundAttention, register
from .sdpa import cudnn_lse, pinned_forward, probe_pinned


def _check() -> str | None:
    if not torch.cuda.is_available():
        return "cuDNN attention needs a CUDA GPU; use sdpa"
    if not torch.backends.cudnn.is_available():
        return f"this PyTorch build ({torch.__version__}) has no cuDNN; install a CUDA build of PyTorch"
    return None


def _bind(device: torch.device, dtype: torch.dtype, options: Mapping[str, str]) -> BoundAttention:
    probe_pinned("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION, device, dtype)
    return BoundAttention(
        backend="sdpa_cudnn",
        kernel=f"PyTorch SDPA pinned to cuDNN attention (cuDNN {torch.backends.cudnn.version()})",
        run=pinned_forward(SDPBackend.CUDNN_ATTENTION),
        run_lse=cudnn_lse,
    )


SDPA_CUDNN = register(
    AttentionBackend(
        name="sdpa_cudnn",
        description="PyTorch SDPA pinned to cuDNN attention (torch.nn.attention.sdpa_kernel)",
        check=_check,
        binder=_bind,
        offers_lse=True,
    )
)
