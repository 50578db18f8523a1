"""The collectives of sequence parallelism, on PyTorch's functional collective ops.

Each function starts its collective and returns a ``Pending`` result: the exchange runs (on the
communication stream, for NCCL) while the caller goes on computing, and ``wait()`` joins it. These are
the ``_c10d_functional`` ops that torch.compile traces, so the same code compiles and keeps its overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .groups import Comm

_c10d = torch.ops._c10d_functional


@dataclass(frozen=True)
class Pending:
    """A started collective; ``wait()`` returns its result with the given shape."""

    raw: torch.Tensor
    shape: tuple[int, ...]

    def wait(self) -> torch.Tensor:
        return _c10d.wait_tensor(self.raw).view(self.shape)


def all_to_all(x: torch.Tensor, group: Comm) -> Pending:
    """Split ``x`` into equal parts along dim 0, send part ``j`` to rank ``j``; the result stacks, along
    dim 0 in rank order, the part each rank sent here."""
    rows = x.shape[0]
    if rows % group.size:
        raise ValueError(f"all_to_all: dim 0 ({rows}) must split evenly over {group.size} ranks")
    splits = [rows // group.size] * group.size
    return Pending(_c10d.all_to_all_single(x.contiguous(), splits, splits, group.name), tuple(x.shape))


def pass_to_next(x: torch.Tensor, group: Comm) -> Pending:
    """Send ``x`` to the next rank of the ring and receive the previous rank's tensor of the same shape."""
    send = [0] * group.size
    recv = [0] * group.size
    send[(group.rank + 1) % group.size] = x.numel()
    recv[(group.rank - 1) % group.size] = x.numel()
    return Pending(_c10d.all_to_all_single(x.reshape(-1).contiguous(), recv, send, group.name), tuple(x.shape))


def all_gather(x: torch.Tensor, group: Comm) -> Pending:
    """Concatenate every rank's ``x`` along dim 0, in rank order."""
    shape = (group.size * x.shape[0], *x.shape[1:])
    return Pending(_c10d.all_gather_into_tensor(x.contiguous(), group.size, group.name), shape)


def all_reduce(x: torch.Tensor, group: Comm, op: str = "sum") -> Pending:
    """Element-wise reduction (``"sum"``, ``"max"``, ...) of ``x`` over the group."""
    return Pending(_c10d.all_reduce(x.contiguous(), op, group.name), tuple(x.shape))
