"""Shared pieces of the worker-group tests: a tiny model, a request, and checks that no process is left."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import torch

from dax_core.models.tiny import write_tiny_model
from dax_core.recipe import Recipe
from dax_core.runtime.engine import SampleRequest, SampleResult, WanEngine
from dax_core.runtime.group import WorkerGroup

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
    and attention partials may be merged: float32 rounding of ~1e-6 per step; a wrong split or a lost step is O(1)."""
    torch.testing.assert_close(got.latent, expected.latent, rtol=1e-5, atol=1e-5)


def group_processes(group: WorkerGroup) -> list[psutil.Process]:
    """The launcher and everything under it, while the group is up."""
    launcher = psutil.Process(group.launcher_pid)
    return [launcher, *launcher.children(recursive=True)]


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
