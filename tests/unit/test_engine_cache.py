"""Engines live while a recipe object that asked for them is alive, one recipe at a time."""

from __future__ import annotations

import gc

from dax_core.cache.config import TeacacheConfig
from dax_core.recipe import Recipe
from dax_core.rules import STEP_CACHE_KINDS
from dax_core.runtime.engine_cache import EngineCache


class FakeEngine:
    def __init__(self, recipe: Recipe, log: list[str]) -> None:
        self.recipe = recipe
        self.log = log
        log.append(f"build {recipe.weights}")

    def close(self) -> None:
        self.log.append(f"close {self.recipe.weights}")


def _cache() -> tuple[EngineCache, list[str]]:
    released: list[str] = []
    return EngineCache(on_release=lambda: released.append("released")), released


def test_same_recipe_builds_once_and_equal_recipes_share_the_engine():
    log: list[str] = []
    cache, _ = _cache()
    a = Recipe("a.safetensors")
    a_again = Recipe("a.safetensors")  # an equal recipe from another node output
    first = cache.get(a, lambda r: FakeEngine(r, log))
    assert cache.get(a, lambda r: FakeEngine(r, log)) is first
    assert cache.get(a_again, lambda r: FakeEngine(r, log)) is first
    assert log == ["build a.safetensors"]
    assert first.recipe == a and first.recipe is not a  # the engine must not keep the caller's object alive


def test_engine_is_released_when_the_last_recipe_object_is_gone():
    log: list[str] = []
    cache, released = _cache()
    a, a_again = Recipe("a.safetensors"), Recipe("a.safetensors")
    cache.get(a, lambda r: FakeEngine(r, log))
    cache.get(a_again, lambda r: FakeEngine(r, log))
    del a
    gc.collect()
    assert len(cache) == 1 and released == []  # a_again still holds it
    del a_again
    gc.collect()
    assert len(cache) == 0
    assert log == ["build a.safetensors", "close a.safetensors"]
    assert released == ["released"]


def test_a_new_recipe_replaces_the_old_engine():
    log: list[str] = []
    cache, _ = _cache()
    a, b = Recipe("a.safetensors"), Recipe("b.safetensors")
    cache.get(a, lambda r: FakeEngine(r, log))
    cache.get(b, lambda r: FakeEngine(r, log))
    assert log == ["build a.safetensors", "close a.safetensors", "build b.safetensors"]
    assert len(cache) == 1


def test_recipes_built_from_one_base_share_the_engine_while_any_is_alive():
    log: list[str] = []
    cache, released = _cache()
    base = Recipe("a.safetensors")
    one = base.with_acceleration(TeacacheConfig(threshold=0.1))
    two = base.with_acceleration(TeacacheConfig(threshold=0.2))
    first = cache.get(one, lambda r: FakeEngine(r, log), built_from=one.without(STEP_CACHE_KINDS))
    assert cache.get(two, lambda r: FakeEngine(r, log), built_from=two.without(STEP_CACHE_KINDS)) is first
    assert log == ["build a.safetensors"] and first.recipe == base
    del one
    gc.collect()
    assert released == []  # `two` still holds it
    del two
    gc.collect()
    assert released == ["released"]


def test_an_owner_upstream_keeps_the_engine_while_later_recipes_come_and_go():
    log: list[str] = []
    cache, released = _cache()
    upstream = Recipe("a.safetensors")
    first = upstream.with_acceleration(TeacacheConfig(threshold=0.1))
    engine = cache.get(first, lambda r: FakeEngine(r, log), built_from=upstream, owner=upstream)
    del first  # ComfyUI replaces the step cache node's output when its widget changes
    gc.collect()
    assert released == []
    second = upstream.with_acceleration(TeacacheConfig(threshold=0.2))
    assert cache.get(second, lambda r: FakeEngine(r, log), built_from=upstream, owner=upstream) is engine
    assert log == ["build a.safetensors"]
    del second, upstream
    gc.collect()
    assert released == ["released"]


def test_an_engine_released_by_someone_else_is_closed_and_built_again_on_the_next_get():
    log: list[str] = []
    cache, released = _cache()
    a = Recipe("a.safetensors")
    first = cache.get(a, lambda r: FakeEngine(r, log))
    assert cache.release(first) and not cache.release(first)  # the second time there is nothing to release
    assert log == ["build a.safetensors", "close a.safetensors"] and released == ["released"] and len(cache) == 0
    assert cache.get(a, lambda r: FakeEngine(r, log)) is not first
    assert log[-1] == "build a.safetensors"
