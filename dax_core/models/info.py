"""The resolved model a recipe carries: what Load Wan DAX read from the weights, once, as plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..experts import EXPERTS
from .spec import WanSpec

FAMILIES = ("wan2.1", "wan2.2")


@dataclass(frozen=True)
class ModelInfo:
    """A model's spec, its variant name (a preset key such as "wan2.1-i2v-14b", or a custom name), its family and,
    for one expert of a two-expert model, which one. Downstream code reads these instead of the weights' headers."""

    spec: WanSpec
    variant: str
    family: str = "wan2.1"
    expert: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.spec, WanSpec):
            raise ValueError(f"ModelInfo.spec must be a WanSpec, got {type(self.spec).__name__}")
        if not isinstance(self.variant, str) or not self.variant:
            raise ValueError("ModelInfo.variant must name the variant, e.g. 'wan2.1-t2v-14b'")
        if self.family not in FAMILIES:
            raise ValueError(f"ModelInfo.family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.expert is not None and self.expert not in EXPERTS:
            raise ValueError(f"ModelInfo.expert {self.expert!r} is not one of {', '.join(EXPERTS)} (or None)")

    @classmethod
    def of(cls, spec: WanSpec) -> ModelInfo:
        """The model of ``spec`` (Wan2.2 for a TI2V spec or an image-to-video one without CLIP features, which only
        Wan2.2 I2V A14B is; else Wan2.1), named by its preset when it is one."""
        wan22 = spec.model_type == "ti2v" or (spec.takes_image_latent and not spec.takes_clip)
        return cls(spec=spec, variant=spec.name, family="wan2.2" if wan22 else "wan2.1")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"spec": self.spec.to_dict(), "variant": self.variant, "family": self.family}
        if self.expert is not None:
            data["expert"] = self.expert
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        data = dict(data)
        return cls(spec=WanSpec.from_dict(data.pop("spec")), **data)
