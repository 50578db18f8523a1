"""Exact attention with its log-sum-exp, in plain tensor arithmetic (any device, chunked over queries).

Logits, softmax and the weighted sum are computed in float32 (float64 for float64 inputs); the output is cast
back to the input dtype. Queries are processed in chunks so the [chunk, keys] logit block stays bounded.

With ``allowed``, a query attends only to the keys its row of the mask allows; a query allowed no key gets a zero
output and a log-sum-exp of -inf (what a partial result contributing nothing is, for the log-sum-exp merge).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Elements of one float32 logit block [B, H, chunk, S_k]: 2**26 floats = 256 MiB.
_BLOCK_ELEMENTS = 1 << 26

MaskRows = Callable[[int, int], torch.Tensor]
"""(first query, end query) -> bool [end - first, S_k]: the keys those queries may attend to."""


def exact_attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, allowed: MaskRows | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v [B, S, H, D] -> (out [B, S, H, D] in q's dtype, lse float32 [B, H, S_q])."""
    b, s_q, h, d = q.shape
    s_k = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qh = q.transpose(1, 2).to(acc)  # [B, H, S_q, D]
    kt = k.permute(0, 2, 3, 1).to(acc)  # [B, H, D, S_k]
    vh = v.transpose(1, 2).to(acc)  # [B, H, S_k, Dv]
    chunk = max(1, _BLOCK_ELEMENTS // max(1, b * h * s_k))
    outs, lses = [], []
    for start in range(0, s_q, chunk):
        logits = torch.matmul(qh[:, :, start : start + chunk], kt) * scale
        if allowed is not None:
            logits = logits.masked_fill(~allowed(start, min(start + chunk, s_q)), float("-inf"))
        lse = torch.logsumexp(logits, dim=-1)
        # rows with no allowed key: lse -inf; subtracting 0 there keeps exp(-inf) = 0 instead of exp(nan)
        weights = torch.exp(logits - torch.where(torch.isinf(lse), 0.0, lse).unsqueeze(-1))
        outs.append(torch.matmul(weights, vh))
        lses.append(lse)
    out = torch.cat(outs, dim=2).transpose(1, 2).to(q.dtype)
    return out, torch.cat(lses, dim=2).float()
