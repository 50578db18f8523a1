"""Wan2.1 specifics of quantization: the default keep list, diffusers module names, float32 layers.

``WanModel`` uses the original Wan names (``blocks.0.self_attn.q``); qconfig keys and keep lists may also
use diffusers' names (``condition_embedder``, ``blocks.0.attn1.to_q``, ``proj_out``), which are translated
to the Wan modules holding the same parameters.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..models.naming import wan_to_diffusers
from ..models.wan import WanModel
from .qconfig import QConfig, QuantizationError

# Kept in high precision by default: text and time embedders, patch embedding, output head.
WAN_KEEP_DEFAULT: tuple[str, ...] = ("text_embedding", "time_embedding", "time_projection", "patch_embedding", "head")
DIFFUSERS_KEEP_DEFAULT: tuple[str, ...] = ("condition_embedder", "patch_embedding", "proj_out")

# Kept in high precision whatever the keep list says: the image embedding of I2V / FLF2V models runs once per
# forward on a few hundred CLIP tokens between two float32 LayerNorms (nothing to gain from 8 bits; the original code,
# ComfyUI and WanVideoWrapper's fp8 files keep it too).
VARIANT_KEPT: tuple[str, ...] = ("img_emb",)

# Linear layers Wan runs in float32 on one vector per sample: never quantized (nothing to gain, and the
# time embedding feeds every block's modulation).
FLOAT32_MODULES: tuple[str, ...] = ("time_embedding", "time_projection")


def diffusers_aliases(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Every diffusers module name (each prefix too) -> the Wan modules holding its parameters."""
    aliases: dict[str, dict[str, None]] = {}
    for name, _ in model.named_parameters():
        try:
            diffusers_name = wan_to_diffusers(name)
        except KeyError:  # not a Wan checkpoint parameter
            continue
        wan_module = name.rpartition(".")[0]
        parts = diffusers_name.rpartition(".")[0].split(".")
        for i in range(1, len(parts) + 1):
            aliases.setdefault(".".join(parts[:i]), {})[wan_module] = None
    return {k: tuple(v) for k, v in aliases.items()}


def translate_keys(
    model: WanModel, qconfig_dict: Mapping[str, QConfig | None]
) -> tuple[dict[str, QConfig | None], list[str]]:
    """Replace diffusers names by the Wan modules they stand for; Wan names and regexes pass through.

    Returns the translated dict and the diffusers names the model also answers to (for error messages).
    A key given in Wan naming wins over one reached through a diffusers alias.
    """
    module_names = {name for name, _ in model.named_modules()}
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    aliases = diffusers_aliases(model)
    out: dict[str, QConfig | None] = {}
    explicit = {k: v for k, v in qconfig_dict.items() if k in module_names or k.startswith("re:") or k not in aliases}
    for key, value in qconfig_dict.items():
        if key in explicit:
            continue
        # only the linears matter; an alias holding none maps to its module, for the "holds no linear" error
        targets = [m for m in aliases[key] if m in linears] or list(aliases[key][:1])
        for wan_module in targets:
            if wan_module not in explicit:
                out[wan_module] = value
    out.update(explicit)
    return out, sorted(set(aliases) - module_names)


def keep_variant_modules(plan: Mapping[str, QConfig | None]) -> dict[str, QConfig | None]:
    """``plan`` with the linears of ``VARIANT_KEPT`` kept in high precision (None)."""
    return {name: None if name.split(".")[0] in VARIANT_KEPT else cfg for name, cfg in plan.items()}


def check_float32_modules(plan: Mapping[str, QConfig | None]) -> None:
    """Raise if a linear that Wan runs in float32 would be quantized."""
    hit = [n for n, cfg in plan.items() if cfg is not None and n.split(".")[0] in FLOAT32_MODULES]
    if hit:
        raise QuantizationError(
            f"{', '.join(hit)} would be quantized, but Wan runs its time embedding and time projection in float32 "
            "on one vector per sample (nothing to gain): keep 'time_embedding' and 'time_projection' "
            "(diffusers: 'condition_embedder') in high precision"
        )
