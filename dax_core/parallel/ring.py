"""Ring attention: every rank holds a block of queries and one key/value chunk; the chunks travel around the
ring, each rank attends its queries to every chunk in turn and merges the partial results by log-sum-exp."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .collectives import pass_to_next
from .groups import Comm
from .lse_attention import merge_partial

ChunkAttention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]
"""(source member, q, k, v) -> (out, lse) of the queries over the keys of that member's chunk, or None where none
of the queries attends to any of them (a block-sparse mask): the chunk is then skipped."""


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: Comm,
    valid_keys: Sequence[int],
    attend_chunk: ChunkAttention,
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
        source = (group.rank - step) % n  # the chunk in hand started at this member
        keys = valid_keys[source]
        part = attend_chunk(source, q, kv[0, :, :keys], kv[1, :, :keys]) if keys else None
        if part is not None:
            acc, acc_lse = merge_partial(acc, acc_lse, *part)
        if pending is not None:
            kv = arrived if arrived is not None else pending.wait()
    if acc is None:
        raise RuntimeError("ring attention: no chunk had a key for this rank's queries (the attention mask is empty)")
    return acc.to(q.dtype)
