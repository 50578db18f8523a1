"""``sparge``: SpargeAttn's block-sparse SageAttention2 (``spas_sage_attn.block_sparse_sage2_attn_cuda``).

SageAttention2's numerics (int8 Q·K with K smoothed by its mean, fp8 P·V on Ada and Hopper) on the blocks the mask
computes. Its API (thu-ml/SpargeAttn, ``spas_sage_attn/core.py``): q, k, v in "NHD" [B, S, H, D] or "HND" layout,
bf16 or fp16, head_dim 64 or 128, at least 128 tokens; ``mask_id`` a contiguous [B, H, query tiles, key tiles]
table (nonzero = computed, any integer dtype; one row per head, so per-head masks are accepted); tiles of 64
queries x 128 keys on Hopper (sm90), 128 x 64 on Ampere and Ada. No log-sum-exp: ring attention needs flex.

The call is a custom op (torch.compile keeps it as one node); inside it the mask's 128-token blocks are expanded to
the GPU's tiles and to every batch row and head. The package copies q, k, v to its "HND" layout and casts v to
fp16; that traffic is part of what the benchmark measures.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

from .block_sparse import BlockSparseKernel, BoundBlockSparse, register
from .custom_op import attention_op, no_lse
from .registry import BackendUnavailable, check_qkv
from .sdpa import HALF_DTYPES

INSTALL_HINT = (
    "build SpargeAttn on the GPU machine from thu-ml/SpargeAttn (`pip install . --no-build-isolation`; with gcc 13 "
    "and CUDA 13 remove `-Xcompiler -include,cassert` from its setup.py first)"
)
TILES = {"sm90": (64, 128), "sm80": (128, 64), "sm86": (128, 64), "sm87": (128, 64), "sm89": (128, 64)}
"""(query, key) tokens per tile of SpargeAttn's kernel for each GPU it builds for."""
HEAD_DIMS = (64, 128)
MIN_TOKENS = 128


@functools.cache
def _package() -> ModuleType | str:
    try:
        return importlib.import_module("spas_sage_attn")
    except ImportError as err:
        return "spas_sage_attn is not installed" if err.name == "spas_sage_attn" else f"spas_sage_attn: {err}"
    except Exception as err:  # a build for another torch/CUDA fails with OSError and friends
        return f"spas_sage_attn failed to import: {err}"


def _check() -> str | None:
    package = _package()
    return f"{package}: {INSTALL_HINT}" if isinstance(package, str) else None


def tile_table(window: torch.Tensor, block: int, tiles: tuple[int, int], q_len: int, k_len: int) -> torch.Tensor:
    """The window of ``block``-token blocks as int8 [query tiles, key tiles] (each tile inside one block)."""
    tq, tk = tiles
    rows = window.to(torch.int8).repeat_interleave(block // tq, 0)[: -(-q_len // tq)]
    return rows.repeat_interleave(block // tk, 1)[:, : -(-k_len // tk)]


def run_sparge(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None,
    return_lse: bool,
    window: torch.Tensor,
    block: int,
    tile_q: int,
    tile_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    if return_lse:
        raise ValueError("SpargeAttn's block-sparse kernel returns no log-sum-exp")
    b, s_q, h, _ = q.shape
    tiles = tile_table(window, block, (tile_q, tile_k), s_q, k.shape[1])
    mask = tiles[None, None].expand(b, h, *tiles.shape).contiguous()
    out = _package().block_sparse_sage2_attn_cuda(q, k, v, mask_id=mask, scale=scale, tensor_layout="NHD")
    return out.contiguous(), no_lse(q)


block_sparse_sage = attention_op("dax::block_sparse_sage", device_types="cuda")(run_sparge)


def _bind(device: torch.device, dtype: torch.dtype, block: int) -> BoundBlockSparse:
    if device.type != "cuda":
        raise BackendUnavailable(f"SpargeAttn runs on CUDA GPUs only (asked for {device}): use the reference kernel")
    if dtype not in HALF_DTYPES:
        raise BackendUnavailable(f"SpargeAttn needs bf16 or fp16 activations, not {dtype}")
    major, minor = torch.cuda.get_device_capability(device)
    arch = f"sm{major}{minor}"
    if arch not in TILES:
        raise BackendUnavailable(
            f"SpargeAttn has kernels for {', '.join(TILES)}, not for {torch.cuda.get_device_name(device)} ({arch}): "
            "use the flex kernel"
        )
    tq, tk = TILES[arch]
    if block % tq or block % tk:
        raise ValueError(
            f"SpargeAttn's {tq}x{tk} tiles on {arch} need mask blocks of a multiple of 128 tokens, not {block}"
        )

    def run(q, k, v, window: torch.Tensor, block: int, scale: float | None) -> torch.Tensor:
        check_qkv("sparge", q, k, v)
        if q.shape[-1] not in HEAD_DIMS or min(q.shape[1], k.shape[1]) < MIN_TOKENS:
            raise ValueError(
                f"SpargeAttn takes head_dim {' or '.join(map(str, HEAD_DIMS))} and at least {MIN_TOKENS} tokens; got "
                f"head_dim {q.shape[-1]}, {q.shape[1]} queries, {k.shape[1]} keys: use the flex or reference kernel"
            )
        return block_sparse_sage(q, k, v, scale, False, window, block, tq, tk)[0]

    pv = "fp16" if major == 8 and minor < 9 else "fp8"
    return BoundBlockSparse(
        name="sparge",
        kernel=f"SpargeAttn block-sparse SageAttention2 ({arch}: int8 Q·K, {pv} P·V, {tq}x{tk} tiles)",
        run=run,
        min_tokens=MIN_TOKENS,
    )


SPARGE = register(
    BlockSparseKernel(
        name="sparge",
        description="SpargeAttn's block-sparse SageAttention2 (CUDA; no log-sum-exp)",
        check=_check,
        binder=_bind,
    )
)
