"""``QuantizeConfig``: the recipe's "quantize" acceleration (what the Quantize Linear node adds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..models.spec import WanSpec
from ..models.wan import WanModel
from ..recipe import Acceleration, RecipeError, register_acceleration
from .fused_inputs import use_input_kernels
from .qconfig import (
    GRANULARITIES,
    PER_TOKEN_PER_CHANNEL,
    SPLIT_TOKENS_HINT,
    QConfig,
    QuantizationError,
    qconfig_for,
    require_fp8_support,
)
from .quantize import BACKENDS, REGEX_PREFIX, plan_quantization, quantize_dynamic
from .wan import WAN_KEEP_DEFAULT

DTYPES = ("fp8", "int8")
INPUT_KERNELS = ("default", "dax")


def parse_keep_list(text: str) -> tuple[str, ...]:
    """'a, b.c ,d' -> ('a', 'b.c', 'd'): a comma list of module-name prefixes (or 're:' patterns)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


@register_acceleration
@dataclass(frozen=True)
class QuantizeConfig(Acceleration):
    """FP8 or INT8 linear layers; ``keep`` names modules (Wan or diffusers naming) left in high precision."""

    kind: ClassVar[str] = "quantize"

    dtype: str = "fp8"
    granularity: str = PER_TOKEN_PER_CHANNEL
    keep: tuple[str, ...] = WAN_KEEP_DEFAULT
    backend: str = "auto"
    input_kernels: str = "dax"
    """How activations are quantized for the 8-bit linears: "dax" (DAX's kernels as custom ops, eager and compiled: the
    norms write only the quantized rows, GELU and ffn.2's quantization are one op; measured on one H200 at 14B 720p with
    FP8 + SageAttention2 + compile: 7.90 s per forward against 7.99 s, and 0.0093 from the bf16 output against 0.0142)
    or "default" (eager CUDA: DAX's norm kernels attach the quantization of what they write; torch.compile: inductor
    generates it from the PyTorch form)."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise RecipeError(f"quantize dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.granularity not in GRANULARITIES:
            raise RecipeError(f"quantize granularity {self.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        if self.backend not in BACKENDS:
            raise RecipeError(f"quantize backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.input_kernels not in INPUT_KERNELS:
            raise RecipeError(f"quantize input_kernels {self.input_kernels!r} is not one of {', '.join(INPUT_KERNELS)}")
        keep = (self.keep,) if isinstance(self.keep, str) else tuple(self.keep)
        for entry in keep:
            if not isinstance(entry, str) or not entry.strip() or (" " in entry and not entry.startswith(REGEX_PREFIX)):
                raise RecipeError(
                    f"keep-list entry {entry!r} is not a module name: write names like 'head' or "
                    "'blocks.0.ffn', separated by commas"
                )
        object.__setattr__(self, "keep", tuple(e.strip() for e in keep))

    @property
    def qconfig(self) -> QConfig:
        return qconfig_for(self.dtype, self.granularity)

    def qconfig_dict(self) -> dict[str, QConfig | None]:
        return {"": self.qconfig, **dict.fromkeys(self.keep)}

    def check(self, spec: WanSpec) -> None:
        """Validate the keep list against a model of ``spec`` (built on the meta device: no memory, no weights)."""
        try:
            plan_quantization(WanModel(spec, device="meta"), self.qconfig_dict())
        except QuantizationError as e:
            raise QuantizationError(f"keep list: {e}") from e

    def check_world_size(self, world_size: int) -> None:
        """Refuse per-tensor activation scales on a forward split over ``world_size`` > 1 ranks: checked when the
        model is built on each rank, and from the recipe before a worker group starts (to fail before every rank
        has loaded the weights)."""
        if world_size > 1 and not self.qconfig.per_token:
            where = f"Quantize Linear ({self.dtype}, {self.granularity}) on {world_size} GPUs"
            raise QuantizationError(f"{where}: {SPLIT_TOKENS_HINT}")

    def apply(self, model: Any, env: Any) -> None:
        self.check_world_size(getattr(env, "world_size", 1))
        if self.dtype == "fp8":
            require_fp8_support(env.device)
        try:
            quantize_dynamic(model, self.qconfig_dict(), backend=self.backend)
        except QuantizationError as e:
            raise QuantizationError(f"Quantize Linear ({self.dtype}, {self.granularity}): {e}") from e
        if self.input_kernels == "dax" and isinstance(model, WanModel):
            use_input_kernels(model)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dtype": self.dtype, "granularity": self.granularity, "keep": list(self.keep),
                "backend": self.backend, "input_kernels": self.input_kernels}  # fmt: skip
