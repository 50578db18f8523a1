"""The process groups of one parallel layout, and where this rank sits in it.

Ranks of the parent group are laid out ``cfg × ring × ulysses`` with Ulysses innermost, so the
all-to-all partners are neighbours (the same NVLink island on a multi-node run) and slice ``i`` of
the video tokens lives on parent rank ``cfg_index * sequence_degree + i``.

The forward only sees ``Comm`` records (group name, size, this rank): plain values that torch.compile
treats as constants, with the functional collectives addressing groups by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed import ProcessGroup

from .config import ParallelConfig


@dataclass(frozen=True)
class Comm:
    """One process group as the collectives use it."""

    name: str
    size: int
    rank: int

    @classmethod
    def of(cls, group: ProcessGroup) -> Comm:
        return cls(group.group_name, group.size(), dist.get_rank(group))


@dataclass(frozen=True)
class ParallelGroups:
    """This rank's coordinates and the groups it communicates in (None where a degree is 1)."""

    parent: Comm
    cfg_index: int
    shard_index: int
    """Which contiguous slice of the (padded) video tokens this rank holds."""
    ulysses: Comm | None
    ring: Comm | None
    created: tuple[ProcessGroup, ...]
    """Sub-groups made here (destroyed by ``close``); the parent and reused groups are not among them."""

    def close(self) -> None:
        for group in self.created:
            dist.destroy_process_group(group)


def _member_lists(config: ParallelConfig) -> tuple[list[list[int]], list[list[int]]]:
    """Parent-group ranks of every Ulysses group and every ring group, in one fixed order."""
    u, r, seq = config.ulysses, config.ring, config.sequence_degree
    bases = [c * seq for c in range(config.cfg_degree)]
    ulysses = [[b + j * u + i for i in range(u)] for b in bases for j in range(r)]
    ring = [[b + i * u + j for i in range(r)] for b in bases for j in range(u)]
    return ulysses, ring


def build_groups(config: ParallelConfig, parent: ProcessGroup) -> ParallelGroups:
    """Create the Ulysses and ring sub-groups of ``parent`` for ``config``.

    Every rank makes every sub-group, in the same order (``new_group`` is collective over the world, and
    NCCL splits sub-communicators from the world's): a layout that needs sub-groups therefore runs on the
    whole world. Layouts without sub-groups (pure Ulysses, pure ring) may run on any group.
    """
    size = parent.size()
    if size != config.world_size:
        raise ValueError(
            f"the process group has {size} ranks but the parallel config is for {config.world_size} GPUs; "
            f"build the config with world_size={size}"
        )
    ranks = dist.get_process_group_ranks(parent)
    me = dist.get_rank(parent)
    cfg_index, shard_index = divmod(me, config.sequence_degree)
    ulysses_lists, ring_lists = _member_lists(config)
    to_make = [m for m in ulysses_lists + ring_lists if 1 < len(m) < size]
    if to_make and size != dist.get_world_size():
        raise ValueError(
            f"{config.describe()} needs sub-groups, which are made by every rank of the world: "
            f"run it on the whole world (group=None), or use pure Ulysses or pure ring on this {size}-rank group"
        )
    made = {tuple(m): dist.new_group([ranks[i] for i in m]) for m in to_make}
    if made and dist.get_backend(parent) == dist.Backend.GLOO:
        # gloo connects a new group's members at once, and a member may be done before its peers are: if it then
        # destroyed the group (a plan disabled before any collective ran in it), a peer still connecting would
        # lose its connection. Every rank has finished connecting once it reaches this barrier.
        dist.barrier(group=parent)
    created = tuple(g for m, g in made.items() if me in m)

    def mine(lists: list[list[int]]) -> Comm | None:
        members = next(m for m in lists if me in m)
        if len(members) == 1:
            return None
        return Comm.of(parent if len(members) == size else made[tuple(members)])

    return ParallelGroups(Comm.of(parent), cfg_index, shard_index, mine(ulysses_lists), mine(ring_lists), created)
