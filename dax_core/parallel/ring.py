"""Ring attention: every rank holds a block of queries and one key/value chunk; the chunks travel around the
ring, each rank attends its queries to every chunk in turn and merges the partial results by log-sum-exp."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .collectives import pass_to_next
from .groups import Comm
from .lse_attention import LseAttentionFn, merge_partial


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: Comm,
    valid_keys: Sequence[int],
    lse_fn: LseAttentionFn,
    overlap: bool = True,
) -> torch.Tensor:
    """Softmax attention of this rank's queries over the keys of every ring member.

    q: [B, Sq, H, D]; k, v: [B, Sk, H, D], this rank's chunk. ``valid_keys[m]`` is how many leading keys of
    member m's chunk are real tokens; the rest is padding and is never attended to. With ``overlap`` the
    next chunk is already on its way while the current one is attended to.
    """
    n = group.size
    if len(valid_keys) != n or not any(valid_keys):
        raise ValueError(f"ring attention needs one valid-key count per member, some nonzero; got {list(valid_keys)}")
    kv = torch.stack((k, v))
    acc = acc_lse = None
    for step in range(n):
        pending = pass_to_next(kv, group) if step < n - 1 else None
        arrived = pending.wait() if pending is not None and not overlap else None
        keys = valid_keys[(group.rank - step) % n]  # the chunk in hand started at this member
        if keys:
            out, lse = lse_fn(q, kv[0, :, :keys], kv[1, :, :keys])
            acc, acc_lse = merge_partial(acc, acc_lse, out, lse)
        if pending is not None:
            kv = arrived if arrived is not None else pending.wait()
    assert acc is not None  # some chunk has real keys (checked above)
    return acc.to(q.dtype)
