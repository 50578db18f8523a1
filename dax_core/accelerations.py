"""Applying a recipe's accelerations to a freshly built model, in a fixed order.

Each acceleration is a frozen config (``dax_core.recipe.Acceleration`` subclass) that knows how to apply
itself to one model instance: ``apply(model, env)``. Quantization comes first (it replaces linear
layers), then the attention backend, radial attention (its dense layers and steps run that backend), the step
cache (TeaCache or MagCache), and compilation last (it traces what the others set).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .models.wan import WanModel
from .recipe import Acceleration, Recipe

log = logging.getLogger(__name__)

APPLY_ORDER = ("quantize", "attention", "radial", "teacache", "magcache", "compile")

# Modules that define (and register) acceleration configs; imported before a recipe is rebuilt from a dict.
CONFIG_MODULES: tuple[str, ...] = (
    "dax_core.quant.config",
    "dax_core.attention.config",
    "dax_core.attention.radial_config",
    "dax_core.compile.regional",
    "dax_core.cache.config",
)


@dataclass(frozen=True)
class BuildEnv:
    """What an acceleration may need to know about where the model runs.

    ``sequence_group``: the process group the video tokens are split over (sequence parallelism), or None on
    one device; accelerations that must decide alike on every rank (step caches) reduce over it.
    ``world_size``: the ranks one forward is split over; quantization refuses per-tensor activation scales when
    it is above 1 (a scale taken on a slice of the tokens is another scale).
    """

    device: torch.device
    world_size: int = 1
    sequence_group: dist.ProcessGroup | None = None


def register_config_modules() -> None:
    for name in CONFIG_MODULES:
        importlib.import_module(name)


register_config_modules()  # importing this module registers every lever's config (``Recipe.from_dict`` needs them)


def apply_accelerations(model: WanModel, recipe: Recipe, env: BuildEnv) -> None:
    def order(acc: Acceleration) -> int:
        return APPLY_ORDER.index(acc.kind) if acc.kind in APPLY_ORDER else len(APPLY_ORDER)

    for acc in sorted(recipe.accelerations, key=order):
        log.info("applying %s: %s", acc.kind, acc)
        acc.apply(model, env)
