"""Attention that also returns each query's log-sum-exp, and the exact merge of partial attentions.

Ring attention computes a query block against one key/value chunk at a time; softmax over all keys is
recovered from the partial outputs and their log-sum-exps: with ``lse = logaddexp(lse_a, lse_b)``,
``out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse)``, exactly.

Layouts follow the attention registry: q, k, v and out are [B, S, H, D]; lse is [B, H, S] in float32
(float64 for float64 inputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

LseAttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_MATH_SCORE_ELEMENTS = 1 << 26  # queries per block of the math kernel: at most 64 Mi scores (256 MiB) at a time


def math_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention in float32 (float64 for float64 inputs), blocked over queries to bound memory."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = q.shape[-1] ** -0.5
    qf, kf, vf = (t.to(acc).transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    b, h, sq, _ = qf.shape
    block = max(1, _MATH_SCORE_ELEMENTS // max(1, b * h * kf.shape[2]))
    outs, lses = [], []
    for start in range(0, sq, block):
        scores = torch.matmul(qf[:, :, start : start + block], kf.transpose(-1, -2)) * scale
        lse = torch.logsumexp(scores, dim=-1)
        outs.append(torch.matmul(torch.exp(scores - lse.unsqueeze(-1)), vf))
        lses.append(lse)
    out = torch.cat(outs, dim=2).transpose(1, 2).to(q.dtype)
    return out, torch.cat(lses, dim=2)


def _flash_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flash = torch.ops.aten._scaled_dot_product_flash_attention
    out, lse = flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))[:2]
    return out.transpose(1, 2), lse


def _efficient_attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, True
    )[:2]
    return out.transpose(1, 2), lse[..., : q.shape[1]]  # the kernel pads its lse rows to a multiple of 32


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) with the best kernel for the tensors: PyTorch's flash kernel for half precision on CUDA,
    its memory-efficient kernel for float32 on CUDA, exact math elsewhere."""
    if q.is_cuda:
        if q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
            return _flash_attention_with_lse(q, k, v)
        if q.dtype == torch.float32:
            return _efficient_attention_with_lse(q, k, v)
    return math_attention_with_lse(q, k, v)


def merge_partial(
    acc: torch.Tensor | None, acc_lse: torch.Tensor | None, out: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold one partial attention (out [B, S, H, D], lse [B, H, S]; lse -inf for a query that attended no key)
    into the running result (float32, or float64 for float64 inputs).

    The running lse is kept as [B, S, H, 1] so it broadcasts against the output.
    """
    dtype = torch.promote_types(out.dtype, torch.float32)
    lse = lse.transpose(1, 2).unsqueeze(-1).to(dtype)
    if acc is None or acc_lse is None:
        return out.to(dtype), lse
    total = torch.logaddexp(acc_lse, lse)
    # a query no key has reached yet (a block-sparse chunk with nothing for it) has lse -inf on both sides: its
    # weights are exp(-inf - 0) = 0, not exp(nan)
    ref = torch.where(torch.isinf(total), 0.0, total)
    merged = acc * torch.exp(acc_lse - ref) + out.to(dtype) * torch.exp(lse - ref)
    return merged, total
