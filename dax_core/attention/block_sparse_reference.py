"""``reference``: exact attention with the block mask applied to every logit, on any device.

Every (query, key) logit is computed and the pairs outside the computed blocks are masked out, so it costs what
dense attention costs: it is the path the unit tier runs (the whole model on the CPU) and the reference the fast
kernels are tested against. Logits in float32 (float64 for float64 inputs), chunked over queries.
"""

from __future__ import annotations

import torch

from .block_sparse import BlockSparseKernel, BoundBlockSparse, register
from .exact import exact_attention_lse
from .registry import check_qkv


def _attend(q, k, v, window: torch.Tensor, block: int, scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    check_qkv("reference block-sparse", q, k, v)
    s_k = k.shape[1]
    window = window.to(q.device)

    def allowed(start: int, end: int) -> torch.Tensor:
        rows = window[start // block : (end - 1) // block + 1].repeat_interleave(block, 0)
        first = start - (start // block) * block
        return rows[first : first + end - start].repeat_interleave(block, 1)[:, :s_k]

    return exact_attention_lse(q, k, v, scale, allowed)


def _bind(device: torch.device, dtype: torch.dtype, block: int) -> BoundBlockSparse:
    if block < 1:
        raise ValueError(f"the mask block size must be a positive number of tokens, got {block}")
    return BoundBlockSparse(
        name="reference",
        kernel=f"exact attention with the block mask on every logit ({block}-token blocks, dense cost)",
        run=lambda q, k, v, window, block, scale: _attend(q, k, v, window, block, scale)[0].contiguous(),
        run_lse=_attend,
    )


REFERENCE = register(
    BlockSparseKernel(
        name="reference",
        description="exact attention with the block mask on every logit (any device; dense cost)",
        check=lambda: None,
        binder=_bind,
        offers_lse=True,
    )
)
