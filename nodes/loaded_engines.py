"""DAX engines as ComfyUI loaded models: "Unload models", "Free model and node cache" and ComfyUI's own memory
management release a worker group (or the one-GPU engine) as they release ComfyUI's own models.

Each engine is registered through ComfyUI's own API (``load_models_gpu`` of a ``ModelPatcher``): the patcher holds a
placeholder module that owns no weights and reports the engine's size as loaded on ComfyUI's device. When ComfyUI
unloads it (``unload_all_models``, ``free_memory``), the patcher's ``ON_DETACH`` callback closes the engine (a group's
processes exit and their GPU memory returns; the one-GPU engine's model is dropped) and nothing else: ComfyUI is in
the middle of its own bookkeeping then. The sampler's cache finds the closed engine at the next prompt and builds
it again. When the cache drops an engine first (its recipe is gone, another recipe needs the GPUs), the patcher
goes with it and ComfyUI forgets the entry by its own finalizer.
"""

from __future__ import annotations

import logging
import weakref
from typing import Generic, TypeVar

import comfy.model_management as mm
import comfy.model_patcher
import torch
from comfy.patcher_extension import CallbacksMP

log = logging.getLogger(__name__)
E = TypeVar("E")


class EnginePlaceholder(torch.nn.Module):
    """What ComfyUI's model management sees of a DAX engine: no weights, the engine's size, its device."""

    def __init__(self, device: torch.device, size: int) -> None:
        super().__init__()
        self.device = device
        self.model_loaded_weight_memory = size  # loaded already: ComfyUI then frees nothing to load it


class LoadedEngine(Generic[E]):
    """An engine (``WanEngine`` or ``WorkerGroup``) and its registration with ComfyUI's model management."""

    def __init__(self, engine: E, device: torch.device, size: int) -> None:
        self.engine: E | None = engine
        self.patcher: comfy.model_patcher.ModelPatcher | None = comfy.model_patcher.ModelPatcher(
            EnginePlaceholder(device, max(1, size)), load_device=device, offload_device=device, size=max(1, size)
        )

    def register(self) -> None:
        """Tell ComfyUI the engine is loaded; when ComfyUI unloads it, it is closed."""
        assert self.patcher is not None
        me = weakref.ref(self)  # the patcher must not keep this object alive

        def unloaded(_patcher: object, _unpatch_all: bool) -> None:
            loaded = me()
            if loaded is not None and loaded.engine is not None:
                log.info("ComfyUI unloads the DAX engine: closing it")
                loaded.close()

        self.patcher.add_callback(CallbacksMP.ON_DETACH, unloaded)
        mm.load_models_gpu([self.patcher])

    def keep_loaded(self) -> list:
        """ComfyUI's entries of this engine, for ``free_memory(..., keep_loaded=...)``."""
        return [m for m in mm.current_loaded_models if self.patcher is not None and m.model is self.patcher]

    def close(self) -> None:
        """Close the engine (a group's processes end) and drop it; the registration goes with this object."""
        engine, self.engine = self.engine, None
        close = getattr(engine, "close", None)
        if callable(close):
            close()
