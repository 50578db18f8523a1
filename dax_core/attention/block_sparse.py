"""Block-sparse attention kernels behind one signature, one file each, checked once and bound once.

Every kernel takes q, k, v [batch, tokens, heads, head_dim] (the attention registry's layout) and a window of a
``BlockTable`` (bool [ceil(S_q / block), ceil(S_k / block)], the same for every batch row and head) and returns the
output [B, S_q, H, D]; a kernel that offers it also returns the log-sum-exp float32 [B, H, S_q] that ring attention
merges with (-inf for a query whose window row is empty). Each kernel computes the tiles of its own hardware
(64 x 128 tokens for SpargeAttn on Hopper, 128 x 128 for FlexAttention) from the mask's blocks, which they divide.

Built-in kernels: ``sparge`` (SpargeAttn's block-sparse SageAttention2), ``flex`` (PyTorch FlexAttention with a
block mask) and ``reference`` (exact attention with the mask applied to every logit, any device); ``auto`` picks
per device. Binding checks the package, the GPU, the dtype and the block size, with the fix in the message.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .registry import BackendUnavailable

log = logging.getLogger(__name__)


class SparseKernel(Protocol):
    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: torch.Tensor, block: int, scale: float | None
    ) -> torch.Tensor: ...


class SparseLseKernel(Protocol):
    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: torch.Tensor, block: int, scale: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class BoundBlockSparse:
    """One block-sparse kernel chosen for a device, dtype and mask block size."""

    name: str
    kernel: str
    """What runs, in words (for logs and the node)."""
    run: SparseKernel = field(repr=False)
    run_lse: SparseLseKernel | None = field(default=None, repr=False)
    min_tokens: int = 1
    """Fewest query and key tokens the kernel accepts."""

    def check_tokens(self, tokens: int) -> None:
        if tokens < self.min_tokens:
            raise ValueError(
                f"{self.kernel} needs at least {self.min_tokens} video tokens, this video has {tokens}: "
                "use the flex or reference kernel for videos this small"
            )


Binder = Callable[[torch.device, torch.dtype, int], BoundBlockSparse]


@dataclass(frozen=True)
class BlockSparseKernel:
    """A registered kernel: whether its packages are here, and how to bind it."""

    name: str
    description: str
    check: Callable[[], str | None] = field(repr=False)
    binder: Binder = field(repr=False)
    offers_lse: bool = False

    @functools.cached_property
    def unavailable_reason(self) -> str | None:
        """Checked once per process."""
        return self.check()

    def bind(self, device: torch.device | str, dtype: torch.dtype, block: int) -> BoundBlockSparse:
        reason = self.unavailable_reason
        if reason is not None:
            raise BackendUnavailable(f"block-sparse kernel {self.name!r} is not available: {reason}")
        return self.binder(torch.device(device), dtype, block)


_KERNELS: dict[str, BlockSparseKernel] = {}
AUTO = "auto"
CUDA_ORDER = ("sparge", "flex")
"""What ``auto`` tries on a GPU, fastest first (H200 measurements: docs/benchmarks). On the CPU: reference."""


def register(kernel: BlockSparseKernel) -> BlockSparseKernel:
    if kernel.name in _KERNELS or kernel.name == AUTO:
        raise ValueError(f"block-sparse kernel {kernel.name!r} is registered twice or reserved")
    _KERNELS[kernel.name] = kernel
    return kernel


def kernel_names() -> list[str]:
    """``auto`` and every registered kernel, installed or not."""
    return [AUTO, *_KERNELS]


def bind_block_sparse(
    name: str, device: torch.device | str, dtype: torch.dtype, block: int, need_lse: bool = False
) -> BoundBlockSparse:
    """The named kernel (or ``auto``'s choice) for ``device``, ``dtype`` and mask blocks of ``block`` tokens.

    ``need_lse``: the kernel must return the log-sum-exp (ring attention); ``auto`` then passes over kernels that
    do not. Raises BackendUnavailable (not installed, wrong device) or ValueError (an option the kernel lacks)."""
    device = torch.device(device)
    if name != AUTO:
        if name not in _KERNELS:
            raise BackendUnavailable(f"unknown block-sparse kernel {name!r}; choose one of {', '.join(kernel_names())}")
        bound = _KERNELS[name].bind(device, dtype, block)
        if need_lse and bound.run_lse is None:
            with_lse = [n for n, k in _KERNELS.items() if k.offers_lse]
            raise BackendUnavailable(
                f"{bound.kernel} returns no log-sum-exp, which ring attention merges its chunks with: use "
                f"{' or '.join(with_lse)} (or auto), or split the video with Ulysses only"
            )
        return bound
    order = CUDA_ORDER if device.type == "cuda" else ("reference",)
    passed = []
    for candidate in order:
        if need_lse and not _KERNELS[candidate].offers_lse:
            passed.append(f"{candidate}: returns no log-sum-exp")
            continue
        try:
            bound = _KERNELS[candidate].bind(device, dtype, block)
        except (BackendUnavailable, ValueError) as err:
            passed.append(f"{candidate}: {err}")
            continue
        if passed:
            log.info("block-sparse kernel auto on %s passed over: %s", device, "; ".join(passed))
        return bound
    raise BackendUnavailable(f"no block-sparse kernel runs on {device} for {dtype}: {'; '.join(passed)}")
