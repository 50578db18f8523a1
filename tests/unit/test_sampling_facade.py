"""The sampler's runtime facade (``dax_core.runtime.sampling``) with a host of its own, no ComfyUI: a run is checked
before anything is built, the engine is built once with room made for it and reused while its owner recipe lives (a
new step-cache setting included), a cancel raises the host's own error between steps and the next run works, and the
result equals the engine's own run."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
import torch

from dax_core.cache.config import TeacacheConfig
from dax_core.runtime.engine import WanEngine
from dax_core.runtime.model_info import recipe_spec
from dax_core.runtime.sampling import GroupOptions, Placement, Sampling, engine_bytes
from tests.unit.group_helpers import tiny_recipe, tiny_request


class Interrupted(Exception):
    """The host's own cancellation."""


class Registered:
    def __init__(self, engine: object) -> None:
        self.engine = engine

    def close(self) -> None:
        self.engine = None


class FakeHost:
    def __init__(self) -> None:
        self.room: list[tuple[float, torch.device, int]] = []
        self.registered: list[tuple[object, int]] = []
        self.cancel_at: int | None = None  # the number of interrupt checks after which the user cancels
        self.checks = 0

    def device(self) -> torch.device:
        return torch.device("cpu")

    def make_room(self, size: float, device: torch.device, keep: Sequence[Registered] = ()) -> None:
        self.room.append((size, device, len(keep)))

    def empty_cache(self) -> None:
        pass

    def register(self, engine: object, size: int) -> Registered:
        self.registered.append((engine, size))
        return Registered(engine)

    def interrupted(self) -> bool:
        return self.cancel_at is not None and self.checks >= self.cancel_at

    def raise_if_interrupted(self) -> None:
        self.checks += 1
        if self.interrupted():
            raise Interrupted


class Status:
    previews = False

    def __init__(self) -> None:
        self.started: tuple[int, int] | None = None
        self.where: Placement | None = None
        self.lines: list[str] = []
        self.steps = 0

    def start(self, steps: int, latent_channels: int) -> None:
        self.started = (steps, latent_channels)

    def show(self, text: str) -> None:
        self.lines.append(text)

    def placed(self, where: Placement) -> None:
        self.where = where

    def on_progress(self, progress: object) -> None:
        self.steps += 1


def test_a_run_builds_once_with_room_made_and_reuses_the_engine(tmp_path):
    host, recipe, request = FakeHost(), tiny_recipe(tmp_path), tiny_request()
    sampling = Sampling(host)
    first = sampling.run(recipe, request, 1, None, Status())
    status = Status()
    second = sampling.run(recipe, request, 1, None, status)
    size = engine_bytes(recipe, recipe_spec(recipe))
    assert [s for _, s in host.registered] == [size] and host.room == [(size, torch.device("cpu"), 0)]
    assert status.started == (4, 16) and status.steps == 4
    assert status.where == Placement(torch.device("cpu"), 1, "", group=False, reused=True)
    expected = WanEngine.build(recipe, "cpu").sample(request).latent
    assert torch.equal(first.latent, expected) and torch.equal(second.latent, expected)


def test_a_new_step_cache_setting_is_taken_by_the_built_engine(tmp_path):
    host, recipe = FakeHost(), tiny_recipe(tmp_path)
    sampling = Sampling(host)
    for threshold in (0.1, 0.3):  # the TeaCache node's widget changes; the recipe upstream of it stays
        status = Status()
        sampling.run(
            recipe.with_acceleration(TeacacheConfig(threshold=threshold, model="wan2.1-t2v-1.3b")),
            tiny_request(),
            1,
            None,
            status,
        )
    assert len(host.registered) == 1 and status.where is not None and status.where.reused


def test_a_refused_run_builds_and_starts_nothing(tmp_path):
    host, status = FakeHost(), Status()
    sampling = Sampling(host)
    wide = dataclasses.replace(tiny_request(), positive=torch.zeros(1, 6, 4096))
    with pytest.raises(ValueError, match=r"must be \[B, tokens, 32\]"):
        sampling.run(tiny_recipe(tmp_path), wide, 1, None, status)
    one_branch = dataclasses.replace(tiny_request(), cfg=1.0)
    with pytest.raises(ValueError, match="but cfg is 1"):  # the group's layout against the request: no group starts
        sampling.run(tiny_recipe(tmp_path), one_branch, 2, GroupOptions(cfg_parallel=True), status)
    assert host.registered == [] and status.started is None and len(sampling.engines) == 0


def test_a_cancel_raises_the_hosts_error_between_steps_and_the_next_run_works(tmp_path):
    host, recipe = FakeHost(), tiny_recipe(tmp_path)
    sampling = Sampling(host)
    host.cancel_at = 2
    status = Status()
    with pytest.raises(Interrupted):
        sampling.run(recipe, tiny_request(), 1, None, status)
    assert 0 < status.steps < 4
    host.cancel_at = None
    done = sampling.run(recipe, tiny_request(), 1, None, Status())
    assert torch.equal(done.latent, WanEngine.build(recipe, "cpu").sample(tiny_request()).latent)
    assert len(host.registered) == 1  # the cancelled run's engine was kept
