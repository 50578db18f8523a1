"""The recipe entries of the step caches: frozen, validated configs that install a TeaCache or a MagCache on one
model. A model takes one step cache: a recipe with both is refused by ``dax_core.rules.check_recipe`` before any
weight is loaded (and by ``apply`` on a model that has one already)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..recipe import Acceleration, RecipeError, register_acceleration
from ..rules import second_step_cache_refused, step_cache_refused
from .coefficients import MODELS, MODES, published_coefficients
from .magcache import MagCache
from .magcache_ratios import MAG_RATIOS
from .teacache import TeaCache

CACHE_DEVICES: tuple[str, ...] = ("model", "cpu")
AUTO = "auto"


@register_acceleration
@dataclass(frozen=True)
class TeacacheConfig(Acceleration):
    """TeaCache settings.

    ``threshold``: accumulated rescaled change under which steps are skipped (0: never skip; higher: faster).
    ``model``: whose published polynomial to use, "auto" for the loaded model's size. ``coefficients``: an
    explicit polynomial (highest power first) that overrides ``model``. ``start`` / ``end``: only steps with
    ``start <= i / steps < end`` may be skipped. ``max_consecutive_skips``: 0 for no limit.
    ``cache_device``: keep residuals where the model runs ("model") or in pinned CPU memory ("cpu").
    """

    kind: ClassVar[str] = "teacache"

    threshold: float = 0.2
    mode: str = "e0"
    model: str = AUTO
    coefficients: tuple[float, ...] = ()
    start: float = 0.0
    end: float = 1.0
    max_consecutive_skips: int = 0
    cache_device: str = "model"

    def __post_init__(self) -> None:
        object.__setattr__(self, "coefficients", tuple(float(c) for c in self.coefficients))  # JSON gives lists
        if not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold) or self.threshold < 0:
            raise RecipeError(
                f"TeaCache threshold must be a number >= 0 (0 turns skipping off), got {self.threshold!r}"
            )
        if self.mode not in MODES:
            raise RecipeError(f"TeaCache mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.model != AUTO and self.model not in MODELS:
            raise RecipeError(f"TeaCache model {self.model!r} is not one of {AUTO}, {', '.join(MODELS)}")
        if self.coefficients and (len(self.coefficients) > 16 or not all(map(math.isfinite, self.coefficients))):
            raise RecipeError(
                f"TeaCache coefficients must be 1 to 16 finite numbers (highest power first), got {self.coefficients}"
            )
        if not (0.0 <= self.start < self.end <= 1.0):
            raise RecipeError(
                f"TeaCache start {self.start} and end {self.end} must satisfy 0 <= start < end <= 1 "
                "(fractions of the steps)"
            )
        if isinstance(self.max_consecutive_skips, bool) or not isinstance(self.max_consecutive_skips, int):
            raise RecipeError(f"max_consecutive_skips must be an integer, got {self.max_consecutive_skips!r}")
        if self.max_consecutive_skips < 0:
            raise RecipeError(f"max_consecutive_skips must be >= 0 (0: no limit), got {self.max_consecutive_skips}")
        if self.cache_device not in CACHE_DEVICES:
            raise RecipeError(f"TeaCache cache_device {self.cache_device!r} is not one of {', '.join(CACHE_DEVICES)}")

    def resolve_coefficients(self, spec_name: str) -> tuple[float, ...]:
        """The polynomial this config uses on a model whose spec is named ``spec_name``."""
        if self.coefficients:
            return self.coefficients
        model = spec_name if self.model == AUTO else self.model
        if model not in MODELS:
            _refuse_by_resolution("TeaCache", "coefficients", spec_name, MODELS)
            raise RecipeError(
                f"TeaCache has no published coefficients for a {spec_name} model; choose the model whose "
                f"polynomial to use ({', '.join(MODELS)}) or give explicit coefficients"
            )
        return published_coefficients(model, self.mode)

    def apply(self, model: Any, env: Any) -> None:
        _check_no_step_cache(model, "TeaCache")
        group = getattr(env, "sequence_group", None)
        if getattr(env, "world_size", 1) > 1 and group is None:
            raise RecipeError(
                f"TeaCache on {env.world_size} sequence-parallel ranks needs their process group "
                "(BuildEnv.sequence_group) so that every rank takes the same skip decisions"
            )
        model.step_cache = TeaCache(
            self.resolve_coefficients(model.spec.name),
            self.threshold,
            mode=self.mode,
            start=self.start,
            end=self.end,
            max_consecutive_skips=self.max_consecutive_skips,
            cache_device=torch.device("cpu") if self.cache_device == "cpu" else None,
            group=group,
        )


@register_acceleration
@dataclass(frozen=True)
class MagcacheConfig(Acceleration):
    """MagCache settings.

    ``threshold``: accumulated magnitude drift under which steps are skipped (0: never skip; higher: faster).
    ``max_consecutive_skips``: MagCache's K (0 for no limit). ``retention_ratio``: the fraction of the first steps
    always computed; ``end``: the fraction of the steps from which every step is computed. ``model``: whose
    calibrated ratios to use, "auto" for the loaded model's size. ``cache_device`` as for TeaCache.
    """

    kind: ClassVar[str] = "magcache"

    threshold: float = 0.12
    max_consecutive_skips: int = 2
    retention_ratio: float = 0.2
    end: float = 1.0
    model: str = AUTO
    cache_device: str = "model"

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, (int, float)) or not math.isfinite(self.threshold) or self.threshold < 0:
            raise RecipeError(
                f"MagCache threshold must be a number >= 0 (0 turns skipping off), got {self.threshold!r}"
            )
        if isinstance(self.max_consecutive_skips, bool) or not isinstance(self.max_consecutive_skips, int):
            raise RecipeError(f"max_consecutive_skips must be an integer, got {self.max_consecutive_skips!r}")
        if self.max_consecutive_skips < 0:
            raise RecipeError(f"max_consecutive_skips must be >= 0 (0: no limit), got {self.max_consecutive_skips}")
        if not (0.0 <= self.retention_ratio < self.end <= 1.0):
            raise RecipeError(
                f"MagCache retention_ratio {self.retention_ratio} and end {self.end} must satisfy "
                "0 <= retention_ratio < end <= 1 (fractions of the steps)"
            )
        if self.model != AUTO and self.model not in MAG_RATIOS:
            raise RecipeError(f"MagCache model {self.model!r} is not one of {AUTO}, {', '.join(MAG_RATIOS)}")
        if self.cache_device not in CACHE_DEVICES:
            raise RecipeError(f"MagCache cache_device {self.cache_device!r} is not one of {', '.join(CACHE_DEVICES)}")

    def resolve_model(self, spec_name: str) -> str:
        """Whose calibrated ratios this config uses on a model whose spec is named ``spec_name``."""
        model = spec_name if self.model == AUTO else self.model
        if model not in MAG_RATIOS:
            _refuse_by_resolution("MagCache", "model", spec_name, MAG_RATIOS)
            raise RecipeError(
                f"MagCache has no calibrated ratios for a {spec_name} model; choose the model whose ratios to use "
                f"({', '.join(MAG_RATIOS)})"
            )
        return model

    def apply(self, model: Any, env: Any) -> None:
        # The decisions follow the step index alone: sequence-parallel ranks agree without a process group.
        _check_no_step_cache(model, "MagCache")
        model.step_cache = MagCache(
            self.resolve_model(model.spec.name),
            self.threshold,
            max_consecutive_skips=self.max_consecutive_skips,
            retention_ratio=self.retention_ratio,
            end=self.end,
            cache_device=torch.device("cpu") if self.cache_device == "cpu" else None,
        )


def _refuse_by_resolution(cache: str, choice: str, spec_name: str, published: Any) -> None:
    """Raise for an automatic choice on a model whose published settings differ by the video's resolution (Wan2.1
    I2V 14B: the 480p and the 720p files share their shapes, and TeaCache4Wan2.1 / MagCache publish one set for each):
    the model cannot tell, the user says which."""
    sizes = [name for name in published if name.startswith(f"{spec_name}-")]
    if sizes:
        raise RecipeError(
            f"{cache}: the {spec_name} model's 480p and 720p files have the same shapes, and its published settings "
            f"differ by resolution: set {choice} to {' or '.join(sizes)} (the one of the file you loaded)"
        )


def _check_no_step_cache(model: Any, adding: str) -> None:
    existing = getattr(model, "step_cache", None)
    if existing is not None:
        raise RecipeError(second_step_cache_refused(existing.name, adding))
    plan = getattr(model, "sequence_parallel", None)
    if plan is not None and plan.config.cfg_parallel:  # the other order is refused by enable_sequence_parallel
        raise RecipeError(step_cache_refused(adding))
