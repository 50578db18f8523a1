"""Reductions that keep cache decisions identical on every rank of a sequence-parallel group.

Under sequence parallelism each rank holds a shard of the video tokens. A cache that measured its input
locally could decide differently on different ranks, and the ranks would then run different collectives and
hang. So the small per-branch sums a decision rests on are reduced over the group first, and every rank
decides from the same float64 numbers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def reduce_sums(local: torch.Tensor, group: dist.ProcessGroup | None, sharded: bool) -> torch.Tensor:
    """Sum float64 partial sums over ``group`` (None: this process alone); the result is equal on every rank.

    ``sharded``: every rank's ``local`` sums over its own shard of the tokens, and the group total is the sum.
    Otherwise every rank measured the same replicated tensor (a time embedding): the group takes rank 0's
    values exactly (the others contribute zeros), so the decision is bit-for-bit the single-process one even
    if the replicas differ in their last bits.
    """
    if group is None:
        return local.to(torch.float64)
    backend = str(dist.get_backend(group))
    if "nccl" in backend and ("gloo" not in backend or local.is_cuda):
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    buf = local.to(device=device, dtype=torch.float64, copy=True)
    if not sharded and dist.get_rank(group) != 0:
        buf.zero_()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    return buf
