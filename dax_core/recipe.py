"""The recipe: a frozen, validated description of a model and the accelerations to apply to it.

A recipe is what the ComfyUI nodes pass along (as DAX_MODEL) and what crosses process boundaries: it
serializes to a dict of primitives (``to_dict``) and back (``from_dict``). Patch nodes never mutate a
recipe; they return a new one (``with_acceleration``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

WEIGHT_DTYPES = ("default", "bf16", "fp16", "fp32", "fp8_e4m3fn")
COMPUTE_DTYPES = ("bf16", "fp16", "fp32")

TORCH_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn,
}


class RecipeError(ValueError):
    """A recipe value is invalid; the message says what to change."""


@dataclass(frozen=True)
class Acceleration:
    """Base of every acceleration config (quantization, attention backend, TeaCache, compile...).

    Subclasses are frozen dataclasses of primitives with a unique ``kind``; they validate themselves
    in ``__post_init__`` and register with ``register_acceleration`` so recipes can be rebuilt from dicts.
    """

    kind: ClassVar[str] = ""

    def apply(self, model: Any, env: Any) -> None:
        """Apply this acceleration to one model instance (``dax_core.accelerations`` calls it in order)."""
        raise NotImplementedError(f"acceleration {self.kind!r} does not implement apply()")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"kind": self.kind, **asdict(self)}


_ACCELERATIONS: dict[str, type[Acceleration]] = {}


def register_acceleration(cls: type[Acceleration]) -> type[Acceleration]:
    if not cls.kind or cls.kind in _ACCELERATIONS:
        raise ValueError(f"acceleration kind {cls.kind!r} is empty or registered twice")
    _ACCELERATIONS[cls.kind] = cls
    return cls


def acceleration_from_dict(data: dict[str, Any]) -> Acceleration:
    from .accelerations import register_config_modules

    register_config_modules()
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in _ACCELERATIONS:
        raise RecipeError(f"unknown acceleration kind {kind!r}; known: {sorted(_ACCELERATIONS)}")
    return _ACCELERATIONS[kind](**data)


@dataclass(frozen=True)
class Recipe:
    """Weights plus dtypes plus an ordered tuple of accelerations (at most one of each kind)."""

    weights: str
    weight_dtype: str = "default"
    compute_dtype: str = "bf16"
    accelerations: tuple[Acceleration, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.weights, str) or not self.weights:
            raise RecipeError("recipe needs a weights path (a .safetensors file or a diffusers folder)")
        if self.weight_dtype not in WEIGHT_DTYPES:
            raise RecipeError(f"weight dtype {self.weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise RecipeError(f"compute dtype {self.compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
        kinds = [a.kind for a in self.accelerations]
        if len(kinds) != len(set(kinds)):
            raise RecipeError(f"each acceleration may appear once; got {kinds}")

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.compute_dtype]

    def acceleration(self, kind: str) -> Acceleration | None:
        return next((a for a in self.accelerations if a.kind == kind), None)

    def with_acceleration(self, acc: Acceleration) -> Recipe:
        """A new recipe with ``acc`` added, replacing any earlier acceleration of the same kind.

        The new recipe remembers this one (``lineage``; not part of its value, equality or dict).
        """
        kept = tuple(a for a in self.accelerations if a.kind != acc.kind)
        derived = Recipe(self.weights, self.weight_dtype, self.compute_dtype, (*kept, acc))
        object.__setattr__(derived, "_derived_from", self)
        return derived

    def lineage(self) -> Iterator[Recipe]:
        """This recipe, then the recipe it was derived from by ``with_acceleration``, and so on."""
        recipe: Recipe | None = self
        while recipe is not None:
            yield recipe
            recipe = getattr(recipe, "_derived_from", None)

    def without(self, kinds: tuple[str, ...]) -> Recipe:
        """A new recipe without the accelerations of these kinds."""
        kept = tuple(a for a in self.accelerations if a.kind not in kinds)
        return Recipe(self.weights, self.weight_dtype, self.compute_dtype, kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "weight_dtype": self.weight_dtype,
            "compute_dtype": self.compute_dtype,
            "accelerations": [a.to_dict() for a in self.accelerations],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        accs = tuple(acceleration_from_dict(a) for a in data.get("accelerations", ()))
        return cls(data["weights"], data.get("weight_dtype", "default"), data.get("compute_dtype", "bf16"), accs)

    def fingerprint(self) -> str:
        """Stable identity of what this recipe builds: equal recipes build equal models."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
