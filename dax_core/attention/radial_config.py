"""The Radial attention acceleration: a frozen recipe entry (kind "radial") that installs ``RadialAttention``.

Defaults are the authors' published settings for Wan2.1-T2V-14B at its default length (mit-han-lab/radial-attention,
``scripts/wan_t2v_inference.sh``: ``dense_layers=1``, ``dense_timesteps=12`` of 50 steps, ``decay_factor 0.2``;
block size 128 in ``radial_attn/models/wan/attention.py``); for the 4-step LightX2V distilled LoRA they keep one
step dense (``scripts/wan_t2v_inference_lightx2v.sh``: ``dense_timesteps=1``). Neither the paper nor the code
publishes settings for Wan2.1-T2V-1.3B: it gets the same (same architecture, schedule and latent grid).

Applied after the attention backend (whose kernel runs the dense layers and steps) and before compilation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..recipe import Acceleration, RecipeError, register_acceleration
from .block_sparse import AUTO, BoundBlockSparse, bind_block_sparse, kernel_names
from .radial import RadialAttention
from .registry import BackendUnavailable

log = logging.getLogger(__name__)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@register_acceleration
@dataclass(frozen=True)
class RadialConfig(Acceleration):
    """Radial attention's schedule (dense steps, dense layers), its window decay, the kernel and the mask block."""

    kind: ClassVar[str] = "radial"

    dense_steps: int = 12
    """The first steps of a sampling run keep dense attention (published: 12 of 50; 1 of a 4-step distilled run)."""
    dense_layers: int = 1
    """The first transformer blocks of every forward keep dense attention."""
    decay_factor: float = 0.2
    """Scales the spatial window of frames two or more apart (the window never drops below one block)."""
    kernel: str = AUTO
    """Block-sparse kernel: auto, sparge (SpargeAttn), flex (FlexAttention) or reference (any device, dense cost)."""
    block_size: int = 128
    """Tokens per mask block: computed blocks are computed whole. SpargeAttn and FlexAttention take 128."""

    def __post_init__(self) -> None:
        for name in ("dense_steps", "dense_layers"):
            if not _count(getattr(self, name)):
                raise RecipeError(f"radial {name} must be a whole number >= 0, got {getattr(self, name)!r}")
        decay = self.decay_factor
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not math.isfinite(decay) or decay <= 0:
            raise RecipeError(f"radial decay_factor must be a positive number (published: 0.2), got {decay!r}")
        if self.kernel not in kernel_names():
            raise RecipeError(f"unknown radial kernel {self.kernel!r}; choose one of {', '.join(kernel_names())}")
        if not _count(self.block_size) or self.block_size < 1:
            raise RecipeError(f"radial block_size must be a positive number of tokens, got {self.block_size!r}")

    def bind(self, device: torch.device | str, dtype: torch.dtype) -> tuple[BoundBlockSparse, BoundBlockSparse | None]:
        """(kernel, ring kernel) for ``device`` and ``dtype``; raises what cannot run there. The ring kernel returns
        the log-sum-exp ring attention needs (None when the chosen kernel has none and auto was not asked)."""
        kernel = bind_block_sparse(self.kernel, device, dtype, self.block_size)
        if kernel.run_lse is not None:
            return kernel, kernel
        if self.kernel != AUTO:
            return kernel, None
        try:
            return kernel, bind_block_sparse(AUTO, device, dtype, self.block_size, need_lse=True)
        except BackendUnavailable as err:
            log.info("radial attention: no kernel for ring attention on %s (%s)", device, err)
            return kernel, None

    def describe(self, device: torch.device | str, dtype: torch.dtype) -> str:
        """What runs on ``device``, in words (binds, so it raises what bind raises)."""
        return self._text(*self.bind(device, dtype))

    def _text(self, kernel: BoundBlockSparse, ring: BoundBlockSparse | None) -> str:
        text = (
            f"radial attention ({self.kernel}): {kernel.kernel}; dense for the first {self.dense_steps} steps and "
            f"the first {self.dense_layers} layers; decay {self.decay_factor:g}, {self.block_size}-token blocks"
        )
        if ring is not None and ring is not kernel:
            text += f"\nring attention chunks: {ring.kernel}"
        return text

    def check_layout(self, ring: int) -> None:
        """Raise ValueError from the recipe alone if this config cannot run with a ring of ``ring`` ranks."""
        if ring > 1 and self.kernel == "sparge":
            raise ValueError(
                "radial attention's sparge kernel returns no log-sum-exp, which ring attention merges its chunks "
                "with: choose the radial kernel auto or flex, or split the video with Ulysses only"
            )

    def apply(self, model: Any, env: Any) -> None:
        if model.sequence_parallel is not None:
            raise RuntimeError("apply radial attention before enabling sequence parallelism on the model")
        kernel, ring = self.bind(env.device, model.compute_dtype)
        model.self_attention_schedule = RadialAttention(
            self.dense_steps, self.dense_layers, self.decay_factor, self.block_size, kernel, ring, env.device,
            chosen_by_auto=self.kernel == AUTO,
        )  # fmt: skip
        log.info("self-attention: %s", self._text(kernel, ring).replace("\n", "; "))
