"""``flex``: PyTorch's FlexAttention with a block mask made of full blocks only.

The window becomes a ``BlockMask`` whose computed blocks are all "full" (the kernel runs them without evaluating a
mask function) and whose other blocks are skipped; its mask function reads the same table, for PyTorch's unfused
path (eager on the CPU). Mask blocks of 128 tokens, FlexAttention's own tile. It returns the log-sum-exp, so it
serves ring attention's chunks. Outside torch.compile the call goes through a ``torch.compile``-d FlexAttention
owned by the bound kernel (the fused kernel exists only compiled); inside a compiled block FlexAttention is traced
in place. The block mask is rebuilt from the window at every call (a sort of a [query blocks, key blocks] table):
a new block mask of the same shapes reuses the compiled kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .block_sparse import BlockSparseKernel, BoundBlockSparse, register
from .registry import BackendUnavailable, check_qkv

FLEX_BLOCK = 128


def _module():
    try:
        from torch.nn.attention import flex_attention
    except ImportError:
        return None
    return flex_attention


def _check() -> str | None:
    if _module() is None:
        return f"PyTorch {torch.__version__} has no torch.nn.attention.flex_attention; install PyTorch 2.5 or later"
    return None


def block_mask(window: torch.Tensor, block: int, q_len: int, k_len: int):
    """The window as a FlexAttention ``BlockMask``: every computed block full, the rest skipped."""
    flex = _module()
    counts = window.sum(-1, dtype=torch.int32)
    # computed blocks first, in key order (a stable sort of "not computed")
    indices = torch.argsort(window.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)

    def mask_mod(b, h, q_idx, kv_idx):
        return window[q_idx // block, kv_idx // block]

    return flex.BlockMask.from_kv_blocks(
        torch.zeros_like(counts)[None, None], torch.zeros_like(indices)[None, None], counts[None, None],
        indices[None, None], BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(q_len, k_len), compute_q_blocks=False,
    )  # fmt: skip


def _lse_request(flex) -> dict:
    aux = getattr(flex, "AuxRequest", None)  # PyTorch 2.9+; return_lse before
    return {"return_aux": aux(lse=True)} if aux is not None else {"return_lse": True}


def _bind(device: torch.device, dtype: torch.dtype, block: int) -> BoundBlockSparse:
    if device.type != "cuda":
        raise BackendUnavailable(
            f"the flex kernel is for CUDA GPUs (asked for {device}): use the reference kernel on the CPU"
        )
    if block != FLEX_BLOCK:
        raise ValueError(f"the flex kernel takes mask blocks of {FLEX_BLOCK} tokens (its tile), not {block}")
    flex = _module()
    compiled: Callable = torch.compile(flex.flex_attention, dynamic=False, fullgraph=True)

    def attend(q, k, v, window: torch.Tensor, block: int, scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        check_qkv("flex block-sparse", q, k, v)
        mask = block_mask(window, block, q.shape[1], k.shape[1])
        fn = flex.flex_attention if torch.compiler.is_compiling() else compiled
        out, aux = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask, scale=scale,
                      **_lse_request(flex))  # fmt: skip
        lse = aux if isinstance(aux, torch.Tensor) else aux.lse
        return out.transpose(1, 2), lse.float()

    return BoundBlockSparse(
        name="flex",
        kernel=f"FlexAttention, PyTorch {torch.__version__} ({FLEX_BLOCK}x{FLEX_BLOCK} blocks, compiled)",
        run=lambda q, k, v, window, block, scale: attend(q, k, v, window, block, scale)[0],
        run_lse=attend,
    )


FLEX = register(
    BlockSparseKernel(
        name="flex",
        description="PyTorch FlexAttention with a block mask of full blocks (CUDA, torch.compile-d)",
        check=_check,
        binder=_bind,
        offers_lse=True,
    )
)
