"""The attention acceleration: which backend runs self-attention and which runs cross-attention to the text.

``AttentionConfig`` is a frozen recipe entry (kind "attention"). Applying it binds the backends for the
model's device and compute dtype (a backend that cannot run there is an error, raised before sampling starts)
and hands the bound kernels to ``WanModel.set_attention`` for that one model instance.

Outside ComfyUI the default backend follows upstream DAX's ``ATTENTION_BACKEND`` environment variable, read in
one place only: ``AttentionConfig.from_env()`` (``with_env_attention`` adds it to a recipe that names none).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..recipe import Acceleration, Recipe, RecipeError, register_acceleration
from . import sage
from .registry import BoundAttention, backend_names, get_backend

log = logging.getLogger(__name__)

SAME = "same"
ENV_VAR = "ATTENTION_BACKEND"
ENV_BACKENDS = {"FLASH_ATTN": "flash", "SAGE_ATTN": "sage", "SDPA": "sdpa"}
"""Upstream DAX's values of ATTENTION_BACKEND (unset or empty means SDPA); backend names are accepted too."""


@register_acceleration
@dataclass(frozen=True)
class AttentionConfig(Acceleration):
    """Self-attention backend, cross-attention backend ("same" by default) and SageAttention's options."""

    kind: ClassVar[str] = "attention"

    backend: str = "sdpa"
    cross_backend: str = SAME
    sage_qk_quant: str = "auto"
    """SageAttention's Q/K int8 granularity: auto, per_thread or per_warp (SageAttention2 CUDA kernels only)."""
    sage_pv_accum: str = "auto"
    """SageAttention's P·V accumulation: auto (its own choice for the GPU) or one the GPU's kernel offers."""
    sage_inputs: str = "auto"
    """Who prepares SageAttention2's int8 / fp8 inputs: "auto" (fused where it can be, else SageAttention's own),
    "sage" (its own kernels, after the model's norms) or "fused" (the model's q/k norm kernels and a value kernel
    write them; the sm90 kernel with per-thread Q/K and fp32+fp32 P·V only, else an error)."""

    def __post_init__(self) -> None:
        names = backend_names()
        if self.backend not in names:
            raise RecipeError(f"unknown attention backend {self.backend!r}; choose one of {', '.join(names)}")
        if self.cross_backend != SAME and self.cross_backend not in names:
            raise RecipeError(
                f"unknown cross-attention backend {self.cross_backend!r}; choose {SAME} or one of {', '.join(names)}"
            )
        if self.sage_qk_quant not in sage.QK_QUANT:
            raise RecipeError(
                f"SageAttention Q/K granularity {self.sage_qk_quant!r} is not one of {', '.join(sage.QK_QUANT)}"
            )
        if self.sage_pv_accum not in sage.PV_ACCUM:
            raise RecipeError(
                f"SageAttention P·V accumulation {self.sage_pv_accum!r} is not one of {', '.join(sage.PV_ACCUM)}"
            )
        if self.sage_inputs not in sage.INPUTS:
            raise RecipeError(f"SageAttention inputs {self.sage_inputs!r} is not one of {', '.join(sage.INPUTS)}")

    @property
    def cross(self) -> str:
        """The backend that runs cross-attention."""
        return self.backend if self.cross_backend == SAME else self.cross_backend

    def _bind_one(self, name: str, role: str, device: torch.device | str, dtype: torch.dtype) -> BoundAttention:
        backend = get_backend(name)  # raises BackendUnavailable with the install hint
        options = {
            "role": role, "qk_quant_gran": self.sage_qk_quant, "pv_accum_dtype": self.sage_pv_accum,
            "inputs": self.sage_inputs,
        }  # fmt: skip
        return backend.bind(device, dtype, **{k: v for k, v in options.items() if k in backend.options})

    def bind(self, device: torch.device | str, dtype: torch.dtype) -> tuple[BoundAttention, BoundAttention]:
        """(self-attention, cross-attention) kernels for ``device`` and ``dtype``; raises what cannot run there.

        ``auto`` chooses per role: on Hopper it may pick SageAttention2 for self-attention and cuDNN for
        cross-attention to the text, where SageAttention's quantization of the queries does not pay off."""
        self_attn = self._bind_one(self.backend, "self", device, dtype)
        if self.cross == self.backend and self.backend != "auto":
            return self_attn, self_attn
        return self_attn, self._bind_one(self.cross, "cross", device, dtype)

    def describe(self, device: torch.device | str, dtype: torch.dtype) -> str:
        """What runs on ``device``, in words (binds, so it raises what bind raises)."""
        self_attn, cross_attn = self.bind(device, dtype)
        if cross_attn.kernel == self_attn.kernel:
            return f"attention ({self.backend}): {self_attn.kernel}"
        return (
            f"self-attention ({self.backend}): {self_attn.kernel}\ncross-attention ({self.cross}): {cross_attn.kernel}"
        )

    def apply(self, model: Any, env: Any) -> None:
        self_attn, cross_attn = self.bind(env.device, model.compute_dtype)
        model.set_attention(self_attn, cross_attn)
        log.info("self-attention: %s (%s)", self_attn.kernel, self.backend)
        log.info("cross-attention: %s (%s)", cross_attn.kernel, self.cross)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AttentionConfig:
        """The config upstream DAX's ``ATTENTION_BACKEND`` asks for: FLASH_ATTN, SAGE_ATTN, or unset for SDPA."""
        environ = os.environ if environ is None else environ
        value = environ.get(ENV_VAR, "").strip()
        if not value:
            return cls()
        name = ENV_BACKENDS.get(value.upper(), value.lower())
        if name not in backend_names():
            accepted = ", ".join([*ENV_BACKENDS, *backend_names()])
            raise RecipeError(
                f"{ENV_VAR}={value!r} is not a known attention backend; use one of {accepted} or unset it"
            )
        return cls(backend=name)


def with_env_attention(recipe: Recipe, environ: Mapping[str, str] | None = None) -> Recipe:
    """``recipe`` with ``AttentionConfig.from_env()`` added when it names no attention backend (standalone use)."""
    if recipe.acceleration(AttentionConfig.kind) is not None:
        return recipe
    return recipe.with_acceleration(AttentionConfig.from_env(environ))
