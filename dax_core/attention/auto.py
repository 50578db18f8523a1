"""``auto``: the fastest backend available on the device, in a fixed order of preference per role.

Self-attention on Hopper (H100, 14B 720p, B1 H40 S75600 D128): SageAttention2's sm90 CUDA kernel 141 ms
(830 TFLOP/s), cuDNN SDPA 197-203 ms, FlashAttention, then PyTorch's flash kernel (329 ms). SageAttention 1.x's
Triton kernels measured slower than cuDNN there (455 TFLOP/s), so auto never takes them: choose ``sage``
explicitly for those. Elsewhere on CUDA (not measured here): SageAttention2, FlashAttention, SDPA.

Cross-attention (the role "cross": 512 text tokens as keys) skips SageAttention: its per-call quantization of
all the video queries costs more than it saves on so few keys (H100, 14B 720p: 2.7 ms against cuDNN's 1.5 ms).

On the CPU: SDPA. Every backend auto may pick returns the log-sum-exp.

The choice is made once, at bind time, and logged with the reason each faster backend was passed over.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

import torch

from . import sage
from .registry import AttentionBackend, BackendUnavailable, BoundAttention, get_backend, register

log = logging.getLogger(__name__)

HOPPER_ORDER = ("sage", "sdpa_cudnn", "flash", "sdpa")
CUDA_ORDER = ("sage", "flash", "sdpa")
ROLES = ("self", "cross")
OPTIONS = {"role": ROLES, **sage.OPTIONS}


def preference(device: torch.device, role: str = "self") -> tuple[str, ...]:
    """Backends in the order auto tries them on ``device`` for self- or cross-attention."""
    if device.type != "cuda":
        return ("sdpa",)
    order = HOPPER_ORDER if torch.cuda.get_device_capability(device)[0] == 9 else CUDA_ORDER
    return order if role == "self" else tuple(n for n in order if n != "sage")


def _bind(device: torch.device, dtype: torch.dtype, options: Mapping[str, str]) -> BoundAttention:
    passed: list[str] = []
    sage_options = {name: value for name, value in options.items() if name in sage.OPTIONS}
    for name in preference(device, options["role"]):
        if name == "sage" and sage.flavour() == "triton":
            passed.append("sage: only SageAttention 1.x (Triton) is installed, slower than the kernels below")
            continue
        try:
            backend = get_backend(name)
            bound = backend.bind(device, dtype, **(sage_options if name == "sage" else {}))
        except BackendUnavailable as err:
            passed.append(f"{name}: {err}")
            continue
        if passed:
            log.info("attention auto on %s passed over: %s", device, "; ".join(passed))
        return replace(bound, kernel=f"{bound.kernel} (chosen by auto)")
    raise BackendUnavailable(f"no attention backend runs on {device} for {dtype}: {'; '.join(passed)}")


AUTO = register(
    AttentionBackend(
        name="auto",
        description="the fastest installed backend on this GPU (Hopper: SageAttention2 > cuDNN > flash > SDPA)",
        check=lambda: None,
        binder=_bind,
        options=OPTIONS,
        offers_lse=True,
    )
)
