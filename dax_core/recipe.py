"""The recipe: a frozen, validated description of a model, the LoRAs merged into it and the accelerations to apply.

A recipe is what the ComfyUI nodes pass along (as DAX_MODEL) and what crosses process boundaries: it
serializes to a dict of primitives (``to_dict``) and back (``from_dict``). Patch nodes never mutate a
recipe; they return a new one (``with_acceleration``, ``with_loras``).

The recipe is data and imports no lever: each acceleration config registers its kind when its module is imported
(``dax_core.accelerations`` imports them all), and ``from_dict`` rebuilds the kinds registered by then.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .experts import AUTO, EXPERTS, MODEL_CHOICES
from .models.dtypes import COMPUTE_DTYPES, TORCH_DTYPES, WEIGHT_DTYPES
from .models.info import ModelInfo

__all__ = [
    "COMPUTE_DTYPES",
    "TORCH_DTYPES",
    "WEIGHT_DTYPES",
    "Acceleration",
    "LoraRef",
    "ModelInfo",
    "Recipe",
    "RecipeError",
    "acceleration_from_dict",
    "register_acceleration",
]


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
    """The acceleration config ``data`` describes; its kind must be registered (import ``dax_core.accelerations``,
    which imports every lever's config, before rebuilding recipes from dicts)."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in _ACCELERATIONS:
        raise RecipeError(
            f"unknown acceleration kind {kind!r}; known: {sorted(_ACCELERATIONS)} (import dax_core.accelerations "
            "first: it registers every lever's config)"
        )
    return _ACCELERATIONS[kind](**data)


@dataclass(frozen=True)
class LoraRef:
    """One LoRA of a recipe: its safetensors file, its strength, and a fingerprint of the file's content.

    The fingerprint (``dax_core.lora.lora_ref`` makes one) is part of the recipe's value: a changed file is a new
    recipe, and a built engine checks that the file it merges is still the one the recipe names.
    """

    path: str
    strength: float
    fingerprint: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise RecipeError("a LoRA needs the path of its .safetensors file")
        strength = self.strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise RecipeError(f"LoRA strength must be a finite number (negative allowed), got {strength!r}")
        object.__setattr__(self, "strength", float(strength))
        if not isinstance(self.fingerprint, str) or not self.fingerprint:
            raise RecipeError(
                f"LoRA {self.path}: no content fingerprint; make the entry with dax_core.lora.lora_ref(path, strength)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "strength": self.strength, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class Recipe:
    """Weights plus dtypes plus an ordered tuple of accelerations (at most one of each kind) plus the LoRAs merged
    into the weights when the model is built, in order, plus the model those weights hold (``model``: resolved once,
    by Load Wan DAX, from the weights' headers; None for a recipe made without it, whose users read the headers).

    ``model_choice``: which model the weights are, where their shapes cannot say (``dax_core.experts``: a Wan2.2 A14B
    expert, or both); "auto" reads it from the file. A two-expert model names the high-noise expert's file in
    ``weights`` and the low-noise expert's in ``low_noise_weights``; each expert is built with every lever of the
    recipe (``expert``).
    """

    weights: str
    weight_dtype: str = "default"
    compute_dtype: str = "bf16"
    accelerations: tuple[Acceleration, ...] = field(default=())
    loras: tuple[LoraRef, ...] = field(default=())
    model: ModelInfo | None = None
    model_choice: str = AUTO
    low_noise_weights: str | None = None

    def __post_init__(self) -> None:
        if self.model is not None and not isinstance(self.model, ModelInfo):
            raise RecipeError(f"recipe model must be a ModelInfo, got {type(self.model).__name__}")
        object.__setattr__(self, "loras", tuple(self.loras))
        if not all(isinstance(lora, LoraRef) for lora in self.loras):
            raise RecipeError(f"recipe LoRAs must be LoraRef entries, got {[type(x).__name__ for x in self.loras]}")
        if not isinstance(self.weights, str) or not self.weights:
            raise RecipeError("recipe needs a weights path (a .safetensors file or a diffusers folder)")
        if self.weight_dtype not in WEIGHT_DTYPES:
            raise RecipeError(f"weight dtype {self.weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise RecipeError(f"compute dtype {self.compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
        kinds = [a.kind for a in self.accelerations]
        if len(kinds) != len(set(kinds)):
            raise RecipeError(f"each acceleration may appear once; got {kinds}")
        if self.model_choice not in MODEL_CHOICES:
            raise RecipeError(f"model {self.model_choice!r} is not one of {', '.join(MODEL_CHOICES)}")
        pair = MODEL_CHOICES[self.model_choice].is_pair
        if pair and (not isinstance(self.low_noise_weights, str) or not self.low_noise_weights):
            raise RecipeError(
                f"{MODEL_CHOICES[self.model_choice].description} needs the low-noise expert's weights too (Load Wan "
                "DAX's low_noise_model_name), or choose one expert alone"
            )
        if not pair and self.low_noise_weights is not None:
            raise RecipeError(
                f"low-noise expert weights are given, but the model {self.model_choice!r} is not a two-expert model: "
                "choose wan2.2-t2v-a14b or wan2.2-i2v-a14b, or leave the low-noise weights out"
            )

    @property
    def is_expert_pair(self) -> bool:
        """Whether the recipe describes two experts (one DAX_MODEL of a Wan2.2 A14B model)."""
        return MODEL_CHOICES[self.model_choice].is_pair

    def expert(self, which: str) -> Recipe:
        """The recipe of one expert ("high" or "low") of a two-expert recipe: its file, every lever of this one."""
        if not self.is_expert_pair:
            raise RecipeError(f"the model {self.model_choice!r} is not a two-expert model")
        if which not in EXPERTS:
            raise RecipeError(f"expert {which!r} is not one of {', '.join(EXPERTS)}")
        weights = self.weights if which == "high" else self.low_noise_weights
        family = MODEL_CHOICES[self.model_choice].family
        # both experts have the resolved model's spec (Load checked the low-noise file against it): only which differs
        model = None if self.model is None else dataclasses.replace(self.model, expert=which)
        return dataclasses.replace(
            self, weights=weights, model=model, model_choice=f"{family}-{which}", low_noise_weights=None
        )

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
        return self._derive(accelerations=(*kept, acc))

    def with_loras(self, loras: tuple[LoraRef, ...]) -> Recipe:
        """A new recipe merging ``loras`` (in place of this one's), remembering this one like ``with_acceleration``."""
        return self._derive(loras=tuple(loras))

    def _derive(self, **changes: Any) -> Recipe:
        derived = dataclasses.replace(self, **changes)
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
        return dataclasses.replace(self, accelerations=kept)

    def without_loras(self) -> Recipe:
        """A new recipe merging no LoRA."""
        return dataclasses.replace(self, loras=())

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "weights": self.weights,
            "weight_dtype": self.weight_dtype,
            "compute_dtype": self.compute_dtype,
            "accelerations": [a.to_dict() for a in self.accelerations],
        }
        if self.loras:
            data["loras"] = [lora.to_dict() for lora in self.loras]
        if self.model is not None:
            data["model"] = self.model.to_dict()
        if self.model_choice != AUTO:
            data["model_choice"] = self.model_choice
        if self.low_noise_weights is not None:
            data["low_noise_weights"] = self.low_noise_weights
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        accs = tuple(acceleration_from_dict(a) for a in data.get("accelerations", ()))
        loras = tuple(LoraRef(**lora) for lora in data.get("loras", ()))
        dtypes = (data.get("weight_dtype", "default"), data.get("compute_dtype", "bf16"))
        model = ModelInfo.from_dict(data["model"]) if data.get("model") is not None else None
        return cls(
            data["weights"], *dtypes, accs, loras, model,
            model_choice=data.get("model_choice", AUTO), low_noise_weights=data.get("low_noise_weights"),
        )  # fmt: skip

    def fingerprint(self) -> str:
        """Stable identity of what this recipe builds: equal recipes build equal models."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
