"""Shared pieces of the worker-group tests: a tiny model, a request, the sampler node's group policy, and checks
that no process and no file is left."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import torch

from dax_core.models.tiny import write_tiny_model
from dax_core.recipe import Recipe
from dax_core.runtime.engine import SampleRequest, SampleResult, WanEngine
from dax_core.runtime.engine_cache import EngineCache
from dax_core.runtime.group import GroupConfig, WorkerGroup

TINY = {"dim": 64, "num_layers": 2, "num_heads": 4, "ffn_dim": 128, "text_dim": 32}


def tiny_recipe(folder: Path, seed: int = 0) -> Recipe:
    path = write_tiny_model(folder / f"tiny-{seed}.safetensors", seed=seed, **TINY)
    return Recipe(str(path), compute_dtype="fp32")


def tiny_request(steps: int = 4, seed: int = 11) -> SampleRequest:
    g = torch.Generator().manual_seed(5)
    return SampleRequest(
        positive=torch.randn(1, 6, TINY["text_dim"], generator=g),
        negative=torch.randn(1, 6, TINY["text_dim"], generator=g),
        latent=torch.zeros(1, 16, 2, 8, 8),  # 2 x 4 x 4 = 32 video tokens
        seed=seed,
        steps=steps,
        cfg=5.0,
        sampler="euler",
    )


def in_process(recipe: Recipe, req: SampleRequest) -> SampleResult:
    return WanEngine.build(recipe, "cpu").sample(req)


def assert_same_latent(got: SampleResult, expected: SampleResult) -> None:
    """The group's latent against the in-process one. With the tokens split over ranks, matmuls run on token slices
    and attention partials may be merged: float32 rounding of ~1e-6 a forward, which the tiny request's CFG 5
    amplifies 9 times (2 x 5 - 1) per step, at latent values up to ~10: 1.4e-5 seen on one element of a 4-rank hybrid
    run on an AVX2 CPU. A wrong split or a lost step is O(1)."""
    torch.testing.assert_close(got.latent, expected.latent, rtol=1e-5, atol=1e-4)


class Groups:
    """The sampler node's policy: one cached group per (recipe, config), started again when it is down."""

    def __init__(self, config: GroupConfig, secret: str | None = None) -> None:
        self.config = config
        self.secret = secret
        self.cache: EngineCache[WorkerGroup] = EngineCache()
        self.started: list[WorkerGroup] = []

    def get(self, recipe: Recipe, config: GroupConfig | None = None) -> WorkerGroup:
        config = config or self.config

        def start(r: Recipe) -> WorkerGroup:
            group = WorkerGroup(r, config, secret=self.secret)
            self.started.append(group)
            return group

        return self.cache.get(recipe, start, variant=repr(config), valid=lambda g: g.alive)


def cached_groups(config: GroupConfig, tmp: Path) -> Iterator[Groups]:
    """The body of a test module's ``groups`` fixture: its groups, closed at the end, with nothing left in ``tmp``."""
    groups = Groups(config)
    yield groups
    groups.cache.clear()
    assert_no_leftovers(tmp)


def next_prompt_starts_a_fresh_group(
    groups: Groups, recipe: Recipe, reference: SampleResult, failed: WorkerGroup
) -> None:
    count = len(groups.started)
    fresh = groups.get(recipe)
    assert fresh is not failed and len(groups.started) == count + 1
    assert_same_latent(fresh.sample(tiny_request()), reference)


def group_processes(group: WorkerGroup) -> list[psutil.Process]:
    """Every process of the group (its ranks and whatever they started), while the group is up."""
    return group.processes()


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_all_gone(procs: list[psutil.Process], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(_running(p) for p in procs):
        time.sleep(0.05)
    left = [f"{p.pid} {' '.join(p.cmdline()[:6])}" for p in procs if _running(p)]
    assert not left, f"processes left behind: {left}"


@contextmanager
def private_tmp(folder: Path) -> Iterator[Path]:
    """The system temp folder of this process (and so of the groups it starts) is ``folder`` meanwhile: what a group
    leaves in temp shows up there, and nobody else's files do."""
    folder.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(folder))
        mp.setattr(tempfile, "tempdir", str(folder))
        yield folder


def assert_no_leftovers(folder: Path) -> None:
    """Nothing of a closed (failed, killed) group is left in the temp folder: no rendezvous, no torchelastic_*."""
    left = sorted(p.name for p in folder.iterdir())
    assert left == [], f"left in the temp folder: {left}"
