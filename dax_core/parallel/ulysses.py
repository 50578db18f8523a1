"""Ulysses self-attention: an all-to-all turns "my tokens, all heads" into "all tokens, my heads", attention runs
on whole sequences for a subset of heads, and a second all-to-all turns the result back.

Two schedules compute the same numbers:

* plain: each of q, k, v and the output is exchanged whole and waited for before anything else runs;
* overlapped: q's exchange runs while k and v are projected, and the attention is cut into units (one
  batch element × one chunk of heads) so the inputs of the next unit and the output of the previous one
  are in flight while a unit is computed. Only the first unit's v and the last unit's output wait on the wire.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..models.wan import WanAttention
from .collectives import Pending, all_to_all
from .groups import Comm

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""q, k, v [B, S, h, D] of whole sequences (for this rank's heads) -> out [B, S, h, D]."""

Rope = tuple[torch.Tensor, torch.Tensor]

UNITS_TARGET = 4
"""Units of the overlapped schedule: enough that one unit's exchange hides behind another's attention."""


def _heads_first(t: torch.Tensor, group: Comm) -> torch.Tensor:
    """[B, s, H, D] -> all_to_all input [U, B, s, H/U, D]: part j holds the heads of rank j."""
    u = group.size
    b, s, h, d = t.shape
    return t.reshape(b, s, u, h // u, d).permute(2, 0, 1, 3, 4)


def ulysses_plain(attn: WanAttention, x: torch.Tensor, rope: Rope, group: Comm, attend: Attend) -> torch.Tensor:
    """Self-attention of this rank's tokens x [B, s, D], each exchange completed before going on."""
    u = group.size
    b, s, _ = x.shape

    def to_heads(t: torch.Tensor) -> torch.Tensor:
        recv = all_to_all(_heads_first(t, group), group).wait()  # [U (source rank), B, s, h, D]
        return recv.transpose(0, 1).reshape(b, u * s, *recv.shape[3:])

    q, k, v = to_heads(attn.query(x, rope)), to_heads(attn.key(x, rope)), to_heads(attn.value(x))
    out = attend(q, k, v)  # [B, U*s, h, D]
    send = out.reshape(b, u, s, *out.shape[2:]).transpose(0, 1)  # part j: the tokens of rank j
    recv = all_to_all(send, group).wait()  # [U (source rank = head group), B, s, h, D]
    return attn.o(recv.permute(1, 2, 0, 3, 4).reshape(b, s, -1))


def head_chunks(heads: int, batch: int, target: int = UNITS_TARGET) -> int:
    """The fewest chunks of ``heads`` (a divisor) that make at least ``target`` units with the batch."""
    return next((c for c in range(1, heads + 1) if heads % c == 0 and batch * c >= target), heads)


def ulysses_overlapped(attn: WanAttention, x: torch.Tensor, rope: Rope, group: Comm, attend: Attend) -> torch.Tensor:
    """Self-attention of this rank's tokens x [B, s, D] with the exchanges hidden behind computation."""
    u = group.size
    b, s, _ = x.shape
    heads = attn.num_heads // u
    chunks = head_chunks(heads, b)
    hc = heads // chunks
    units = [(i, c * hc) for i in range(b) for c in range(chunks)]

    def send(t: torch.Tensor) -> list[Pending]:
        parts = _heads_first(t, group)  # [U, B, s, h, D]
        return [all_to_all(parts[:, i, :, h0 : h0 + hc], group) for i, h0 in units]

    # Each exchange starts as soon as its tensor exists and runs while the next projection computes.
    q_in = send(attn.query(x, rope))
    k_in = send(attn.key(x, rope))
    v_in = send(attn.value(x))
    back: list[Pending] = []
    for unit in range(len(units)):
        # received [U (source rank), s, hc, D] = the whole sequence, in order, for this chunk of heads
        q, k, v = (p[unit].wait().flatten(0, 1).unsqueeze(0) for p in (q_in, k_in, v_in))
        out = attend(q, k, v)  # [1, U*s, hc, D]
        back.append(all_to_all(out.reshape(u, s, hc, out.shape[-1]), group))
    gathered = x.new_empty(b, s, u, heads, back[0].shape[-1])
    for (i, h0), pending in zip(units, back, strict=True):
        gathered[i, :, :, h0 : h0 + hc] = pending.wait().transpose(0, 1)  # [s, U (head group), hc, D]
    return attn.o(gathered.flatten(2))
