"""Joining a process group and building the engine on one rank: shared by worker-group ranks and ``generate``.

Ranks are started by a one-machine worker group's owner or by PyTorch's launcher (``torchrun``); either sets RANK,
WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE. On GPUs each rank takes the GPU of its local rank and joins with NCCL;
on CPU with gloo. The collective timeout is bounded so that a hung or dead peer turns into an error on every other
rank at last (a worker group's owner tells them sooner, by their heartbeats).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from ..parallel import ParallelConfig, enable_sequence_parallel
from ..recipe import Recipe
from ..rules import check_recipe
from .engine import WanEngine
from .expert_pair import ExpertPair
from .model_info import recipe_spec

log = logging.getLogger(__name__)

DEVICE_KINDS = ("cuda", "cpu")

__all__ = [
    "DEVICE_KINDS",
    "ParallelConfig",
    "RankEnv",
    "build_engine",
    "init_process_group",
    "parallel_from_dict",
]


@dataclass(frozen=True)
class RankEnv:
    """Where this process sits in the launch (a lone process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> RankEnv:
        def get(name: str, default: int) -> int:
            value = environ.get(name)
            if value is None:
                return default
            if not value.isdigit():
                raise ValueError(f"environment variable {name}={value!r} is not a non-negative integer")
            return int(value)

        env = cls(get("RANK", 0), get("WORLD_SIZE", 1), get("LOCAL_RANK", 0), get("LOCAL_WORLD_SIZE", 1))
        if not 0 <= env.rank < env.world_size or not 0 <= env.local_rank < env.local_world_size:
            raise ValueError(f"inconsistent launcher environment: {env}")
        return env

    def device(self, kind: str) -> torch.device:
        """The device of this rank: ``cuda:<local rank>`` or the CPU."""
        if kind not in DEVICE_KINDS:
            raise ValueError(f"device kind {kind!r} is not one of {', '.join(DEVICE_KINDS)}")
        if kind == "cpu":
            return torch.device("cpu")
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise RuntimeError(
                f"local rank {self.local_rank} needs GPU {self.local_rank} but {count} are visible here: "
                "start at most one process per visible GPU (check CUDA_VISIBLE_DEVICES and --nproc-per-node)"
            )
        return torch.device("cuda", self.local_rank)


def init_process_group(env: RankEnv, device: torch.device, timeout_s: float, store_file: str | None = None) -> None:
    """Join the group: NCCL on a GPU, gloo on the CPU, collectives bounded by ``timeout_s``.

    ``store_file``: the rendezvous is a file (``FileStore``) in a directory only the owner's user can open, as a
    one-machine worker group makes it; None: the launcher's (``torchrun``: MASTER_ADDR / MASTER_PORT).
    """
    timeout = timedelta(seconds=timeout_s)
    where: dict[str, Any] = {}
    if store_file is not None:
        where = {"store": dist.FileStore(store_file, env.world_size), "rank": env.rank, "world_size": env.world_size}
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device, **where)
    else:
        dist.init_process_group("gloo", timeout=timeout, **where)
    log.info("rank %d of %d joined the process group on %s", env.rank, env.world_size, device)


def parallel_from_dict(data: Mapping[str, Any] | None) -> ParallelConfig | None:
    return None if data is None else ParallelConfig.from_dict(dict(data))


def parallel_to_dict(cfg: ParallelConfig | None) -> dict[str, Any] | None:
    return None if cfg is None else cfg.to_dict()


def build_engine(recipe: Recipe, device: torch.device, parallel: ParallelConfig | None) -> WanEngine | ExpertPair:
    """The recipe's engine on ``device``; with a parallel layout its forward is split over the process group
    (the whole world), which the accelerations are given too (a step cache decides alike on every rank). A
    two-expert recipe gives both experts, each built so (``ExpertPair``).

    The recipe and the layout are checked against the weights file's header first (``dax_core.rules``, what the
    owner of a worker group checked already), before any weight is loaded."""
    check_recipe(recipe, recipe_spec(recipe), parallel)
    if recipe.is_expert_pair:
        return ExpertPair.build(recipe, device, build=lambda r, d: _build_one(r, d, parallel))
    return _build_one(recipe, device, parallel)


def _build_one(recipe: Recipe, device: torch.device, parallel: ParallelConfig | None) -> WanEngine:
    if parallel is None or parallel.world_size == 1:
        return WanEngine.build(recipe, device)
    engine = WanEngine.build(recipe, device, sequence_group=dist.group.WORLD)
    enable_sequence_parallel(engine.model, parallel)
    engine.parallel = parallel
    return engine


SEQUENCE_PARALLEL_MODES = ("ulysses", "ring", "hybrid")


def parallel_layout(
    world_size: int, mode: str = "ulysses", ulysses_degree: int = 2, cfg_parallel: bool = False, overlap: bool = True
) -> ParallelConfig:
    """The layout of ``world_size`` processes from a user's choices (the sampler node's widgets).

    CFG-parallel gives the conditional and unconditional branches half of the processes each; the rest is split
    over the video tokens: all Ulysses (heads), all ring (key/value blocks), or hybrid (``ulysses_degree`` x ring).
    """
    if mode not in SEQUENCE_PARALLEL_MODES:
        raise ValueError(f"sequence parallelism {mode!r} is not one of {', '.join(SEQUENCE_PARALLEL_MODES)}")
    branches = 2 if cfg_parallel else 1
    if world_size % branches:
        raise ValueError(
            f"CFG-parallel runs the two guidance branches on two halves of the processes: {world_size} cannot be "
            "halved; use an even number of GPUs or turn CFG-parallel off"
        )
    seq = world_size // branches
    if mode == "ulysses":
        ulysses, ring = seq, 1
    elif mode == "ring":
        ulysses, ring = 1, seq
    else:
        if ulysses_degree < 1 or seq % ulysses_degree:
            raise ValueError(
                f"hybrid: the Ulysses degree {ulysses_degree} must divide the {seq} processes that split the video "
                f"tokens (ring degree = {seq} / Ulysses degree); use one of "
                f"{', '.join(str(d) for d in range(1, seq + 1) if seq % d == 0)}"
            )
        ulysses, ring = ulysses_degree, seq // ulysses_degree
    return ParallelConfig(world_size=world_size, ulysses=ulysses, ring=ring, cfg_parallel=cfg_parallel, overlap=overlap)
