"""``sdpa``: PyTorch's scaled_dot_product_attention, PyTorch choosing the kernel (cuDNN, flash, efficient, math).

Also the pieces the pinned SDPA backends share: the layout views, the log-sum-exp of each fused kernel, and
the probe that tells whether a pinned kernel runs on a device.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .custom_op import attention_op, no_lse
from .exact import exact_attention_lse
from .registry import AttentionBackend, BackendUnavailable, BoundAttention, check_qkv, register

HALF_DTYPES = (torch.bfloat16, torch.float16)


def bhsd(x: torch.Tensor) -> torch.Tensor:
    """[B, S, H, D] -> the [B, H, S, D] view SDPA takes. A view: the fused kernels read the strides as they are."""
    return x.transpose(1, 2)


def sdpa_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    # The fused kernels write their output [B, S, H, D]-contiguous, so the transpose back is free as well.
    return F.scaled_dot_product_attention(bhsd(q), bhsd(k), bhsd(v), scale=scale).transpose(1, 2)


def pinned_forward(kernel: SDPBackend):
    def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
        with sdpa_kernel(kernel):
            return sdpa_forward(q, k, v, scale)

    return forward


def lse_bhs(lse: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """A fused kernel's log-sum-exp as float32 [B, H, S_q] (memory-efficient attention pads S to a multiple of 32,
    cuDNN may add a trailing unit dimension)."""
    b, s, h, _ = q.shape
    return lse.reshape(b, h, -1)[..., :s].float()


def flash_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse, *_ = torch.ops.aten._scaled_dot_product_flash_attention(bhsd(q), bhsd(k), bhsd(v), scale=scale)
    return out.transpose(1, 2), lse_bhs(lse, q)


def cudnn_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse, *_ = torch.ops.aten._scaled_dot_product_cudnn_attention(
        bhsd(q), bhsd(k), bhsd(v), None, True, scale=scale
    )
    return out.transpose(1, 2), lse_bhs(lse, q)


def efficient_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse, *_ = torch.ops.aten._scaled_dot_product_efficient_attention(
        bhsd(q), bhsd(k), bhsd(v), None, True, scale=scale
    )
    return out.transpose(1, 2), lse_bhs(lse, q)


_LSE_KERNELS = {
    SDPBackend.FLASH_ATTENTION: flash_lse,
    SDPBackend.EFFICIENT_ATTENTION: efficient_lse,
    SDPBackend.CUDNN_ATTENTION: cudnn_lse,
}


@attention_op("dax::sdpa_with_lse")
def sdpa_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, return_lse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel PyTorch picks for these inputs, asked for its log-sum-exp; exact math on the CPU.

    A custom op because the pick (``torch._fused_sdp_choice``) is made on real tensors, as SDPA makes it."""
    out, lse = None, None
    if q.device.type == "cuda":
        choice = SDPBackend(torch._fused_sdp_choice(bhsd(q), bhsd(k), bhsd(v), scale=scale))
        if choice in _LSE_KERNELS:
            out, lse = _LSE_KERNELS[choice](q, k, v, scale)
    if out is None:
        out, lse = exact_attention_lse(q, k, v, scale)
    return out.contiguous(), (lse if return_lse else no_lse(q))


def sdpa_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None):
    check_qkv("sdpa", q, k, v)
    return sdpa_with_lse(q, k, v, scale, True)


def sdpa_choice(device: torch.device, dtype: torch.dtype, head_dim: int = 128) -> str:
    """Which kernel PyTorch's SDPA picks on ``device`` for a Wan-like call (for logs)."""
    if device.type != "cuda":
        return "PyTorch's CPU kernels"
    x = torch.zeros(1, 2, 128, head_dim, device=device, dtype=dtype)
    choice = SDPBackend(torch._fused_sdp_choice(x, x, x))
    return {
        SDPBackend.FLASH_ATTENTION: "flash",
        SDPBackend.EFFICIENT_ATTENTION: "memory-efficient",
        SDPBackend.CUDNN_ATTENTION: "cuDNN",
    }.get(choice, "math")


def probe_pinned(name: str, kernel: SDPBackend, device: torch.device, dtype: torch.dtype) -> None:
    """Run the pinned kernel once on tiny inputs so a device or dtype it cannot serve fails at bind time."""
    if device.type != "cuda":
        raise BackendUnavailable(f"attention backend {name!r} runs on CUDA GPUs only (asked for {device}); use sdpa")
    if dtype not in HALF_DTYPES:
        raise BackendUnavailable(f"attention backend {name!r} needs bf16 or fp16 activations, not {dtype}; use sdpa")
    x = torch.zeros(1, 128, 2, 128, device=device, dtype=dtype)
    try:
        pinned_forward(kernel)(x, x, x, None)
    except RuntimeError as err:
        gpu = torch.cuda.get_device_name(device)
        raise BackendUnavailable(
            f"PyTorch {torch.__version__} cannot run {name} on {gpu}: {str(err).splitlines()[0]}; use sdpa"
        ) from err


def _bind(device: torch.device, dtype: torch.dtype, options: Mapping[str, str]) -> BoundAttention:
    return BoundAttention(
        backend="sdpa",
        kernel=f"PyTorch SDPA, PyTorch choosing the kernel ({sdpa_choice(device, dtype)} for {dtype} here)",
        run=sdpa_forward,
        run_lse=sdpa_lse,
    )


SDPA_DEFAULT = BoundAttention(
    backend="sdpa", kernel="PyTorch SDPA (PyTorch chooses the kernel)", run=sdpa_forward, run_lse=sdpa_lse
)
"""What a model runs before any attention config is applied."""

SDPA = register(
    AttentionBackend(
        name="sdpa",
        description="PyTorch scaled_dot_product_attention (PyTorch chooses the kernel)",
        check=lambda: None,
        binder=_bind,
        offers_lse=True,
    )
)
