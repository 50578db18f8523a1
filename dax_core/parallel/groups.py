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


def build_groups(config: ParallelConfig, parent: ProcessGroup) -> ParallelGroups:
    """Create the Ulysses and ring sub-groups of ``parent`` for ``config``.

    Only the members of each sub-group take part in making it (``use_local_synchronization``), so
    ``parent`` may itself be a sub-group of the world.
    """
    size = parent.size()
    if size != config.world_size:
        raise ValueError(
            f"the process group has {size} ranks but the parallel config is for {config.world_size} GPUs; "
            f"build the config with world_size={size}"
        )
    ranks = dist.get_process_group_ranks(parent)
    if ranks != sorted(ranks):
        raise ValueError(f"the process group's ranks must be in ascending order, got {ranks}")
    me = dist.get_rank(parent)
    u_deg, r_deg, seq = config.ulysses, config.ring, config.sequence_degree
    cfg_index, shard_index = divmod(me, seq)
    ring_index, ulysses_index = divmod(shard_index, u_deg)
    base = cfg_index * seq
    created: list[ProcessGroup] = []

    def subgroup(members: list[int]) -> Comm | None:
        if len(members) == 1:
            return None
        if len(members) == size:
            return Comm.of(parent)
        group = dist.new_group([ranks[m] for m in members], use_local_synchronization=True)
        created.append(group)
        return Comm.of(group)

    ulysses = subgroup([base + ring_index * u_deg + i for i in range(u_deg)])
    ring = subgroup([base + i * u_deg + ulysses_index for i in range(r_deg)])
    assert ulysses is None or ulysses.rank == ulysses_index
    assert ring is None or ring.rank == ring_index
    return ParallelGroups(Comm.of(parent), cfg_index, shard_index, ulysses, ring, tuple(created))
