"""ComfyUI as the host of DAX's engines (``dax_core.runtime.sampling.Host``): its device, its model management
making room for a model and registering a built engine as loaded (``loaded_engines``), its Cancel button."""

from __future__ import annotations

from collections.abc import Sequence

import comfy.model_management as mm
import torch

from .loaded_engines import LoadedEngine


class ComfyHost:
    def device(self) -> torch.device:
        return mm.get_torch_device()

    def make_room(self, size: float, device: torch.device, keep: Sequence[LoadedEngine] = ()) -> None:
        mm.free_memory(size, device, keep_loaded=[entry for loaded in keep for entry in loaded.keep_loaded()])

    def empty_cache(self) -> None:
        mm.soft_empty_cache()

    def register(self, engine: object, size: int) -> LoadedEngine:
        loaded = LoadedEngine(engine, mm.get_torch_device(), size)
        loaded.register()
        return loaded

    def interrupted(self) -> bool:
        return mm.processing_interrupted()

    def raise_if_interrupted(self) -> None:
        mm.throw_exception_if_processing_interrupted()
