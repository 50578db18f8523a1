"""DAX engines registered with ComfyUI's own model management (its real ``comfy.model_management``, on the CPU):
"Unload models" (``unload_all_models``) and ``free_memory`` close them, and the sampler's cache builds them again
on the next get; ``keep_loaded`` keeps them; an engine the cache drops leaves ComfyUI's list by ComfyUI's own
finalizer."""

from __future__ import annotations

import gc

import pytest

from dax_core.recipe import Recipe
from dax_core.runtime.engine_cache import EngineCache
from tests.unit.node_modules import node_module


class FakeGroup:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def comfy(comfyui_importable):
    import comfy.model_management as mm

    mm.unload_all_models()
    yield mm
    mm.unload_all_models()


class Sampler:
    """The sampler node's use of the cache: one registered engine per recipe, built again once ComfyUI closed it."""

    def __init__(self, mm, size: int = 1 << 20) -> None:
        self.mm = mm
        self.module = node_module("loaded_engines")
        self.cache: EngineCache = EngineCache()
        self.size = size
        self.built: list[FakeGroup] = []

    def get(self, recipe: Recipe):
        def build(_r):
            self.built.append(FakeGroup())
            loaded = self.module.LoadedEngine(self.built[-1], self.mm.get_torch_device(), self.size)
            loaded.register()
            return loaded

        return self.cache.get(recipe, build, valid=lambda e: e.engine is not None)

    def ours(self, loaded) -> list:
        return [m for m in self.mm.current_loaded_models if m.model is loaded.patcher]


def test_unload_models_closes_a_registered_engine_and_the_next_prompt_builds_it_again(comfy):
    sampler, recipe = Sampler(comfy), Recipe("a.safetensors")
    loaded = sampler.get(recipe)
    assert len(sampler.ours(loaded)) == 1 and sampler.built[0].closed == 0
    comfy.unload_all_models()  # what the "Unload models" button (POST /free {"unload_models": true}) runs
    assert sampler.built[0].closed == 1 and loaded.engine is None and sampler.ours(loaded) == []
    again = sampler.get(recipe)
    assert again is not loaded and len(sampler.built) == 2 and len(sampler.ours(again)) == 1
    assert sampler.built[0].closed == 1  # closed once: the cache's own drop of the closed engine is a no-op


def test_free_memory_keeps_an_engine_it_is_told_to_keep(comfy):
    sampler, recipe = Sampler(comfy), Recipe("a.safetensors")
    loaded = sampler.get(recipe)
    device = comfy.get_torch_device()
    comfy.free_memory(1e30, device, keep_loaded=loaded.keep_loaded())  # the sampler, clearing a GPU for its group
    assert sampler.built[0].closed == 0 and len(sampler.ours(loaded)) == 1
    comfy.free_memory(1e30, device)  # anyone else who needs the memory
    assert sampler.built[0].closed == 1 and sampler.ours(loaded) == []


def test_an_engine_the_cache_drops_leaves_comfyuis_list(comfy):
    sampler, recipe = Sampler(comfy), Recipe("a.safetensors")
    loaded = sampler.get(recipe)
    entries = len(comfy.current_loaded_models)
    del recipe, loaded  # the DAX_MODEL output ComfyUI cached is gone ("Free model and node cache")
    gc.collect()
    assert sampler.built[0].closed == 1 and len(sampler.cache) == 0
    assert len(comfy.current_loaded_models) == entries - 1  # the placeholder's finalizer ran ComfyUI's sweep


def test_the_placeholder_holds_no_weights_and_reports_the_engines_size(comfy):
    sampler = Sampler(comfy, size=3 << 30)
    loaded = sampler.get(Recipe("a.safetensors"))
    (entry,) = sampler.ours(loaded)
    assert list(loaded.patcher.model.parameters()) == [] and entry.device == comfy.get_torch_device()
    assert entry.model_memory() == 3 << 30 and entry.model_offloaded_memory() == 0  # loaded: nothing to make room for
