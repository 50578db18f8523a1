"""Seeded random weights at real shapes: no Wan checkpoint is needed to measure speed.

Every parameter's values come from its (Wan) name and a seed, so two implementations with different parameter names
(dax_core, diffusers) get identical weights, and a second build of the same model is the same model.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import torch

from ..models.spec import WanSpec
from ..models.wan import WanModel


def _seed(name: str, seed: int) -> int:
    return zlib.crc32(name.encode()) ^ seed


def seeded_values(wan_name: str, shape: tuple[int, ...], device: torch.device | str, seed: int) -> torch.Tensor:
    """The float32 values of the parameter ``wan_name`` of ``shape`` for ``seed``, generated on ``device``. Small
    scales keep 40 layers finite; norm weights sit around 1."""
    g = torch.Generator(device=device).manual_seed(_seed(wan_name, seed))
    ndim = len(shape)
    if wan_name.endswith("modulation"):
        std = 0.1
    elif ndim >= 2:
        std = 0.5 / shape[-1] ** 0.5
    else:
        std = 0.02
    values = torch.randn(shape, generator=g, device=device, dtype=torch.float32) * std
    if ndim == 1 and "norm" in wan_name and wan_name.endswith("weight"):
        values += 1.0
    return values


@torch.no_grad()
def fill_seeded_(module: torch.nn.Module, seed: int, rename: Callable[[str], str] = lambda n: n) -> None:
    """Deterministic random values per (Wan) parameter name (``seeded_values``), on the parameter's device."""
    for name, p in module.named_parameters():
        p.copy_(seeded_values(rename(name), tuple(p.shape), p.device, seed))


def build_model(spec: WanSpec, device: torch.device | str, dtype: torch.dtype, seed: int) -> WanModel:
    """A ``WanModel`` built directly on ``device`` (no host copy) with seeded weights, in eval mode."""
    model = WanModel(spec, device="meta", dtype=dtype).to_empty(device=device)
    fill_seeded_(model, seed)
    return model.eval()


def share_weights(model: WanModel) -> WanModel:
    """A second ``WanModel`` whose parameters are the same tensors as ``model``'s: no copy, no new memory.

    Levers that replace modules (quantization) or patch one instance (attention, compile, step caches) then change the
    new model only, so one build of the weights serves every variant of a benchmark.
    """
    twin = WanModel(model.spec, device="meta", dtype=model.compute_dtype)
    twin.load_state_dict(model.state_dict(keep_vars=True), assign=True)
    for name, module in model.named_modules():  # plain tensor attributes (an fp8 file's per-tensor weight scales)
        scale = getattr(module, "weight_scale", None)
        if isinstance(scale, torch.Tensor):
            twin.get_submodule(name).weight_scale = scale
    return twin.eval()


def _variant_config(spec: WanSpec) -> dict:
    """The ``WanTransformer3DModel`` arguments that differ from its text-to-video defaults for ``spec``."""
    config: dict[str, Any] = {}
    if (spec.in_dim, spec.out_dim) != (16, 16):
        config |= {"in_channels": spec.in_dim, "out_channels": spec.out_dim}
    if spec.takes_clip:
        config |= {"image_dim": spec.clip_dim, "added_kv_proj_dim": spec.dim}
    if spec.image_pos_tokens:
        config["pos_embed_seq_len"] = spec.image_pos_tokens
    return config


def build_diffusers(spec: WanSpec, device: torch.device | str, dtype: torch.dtype, seed: int) -> Any:
    """diffusers' ``WanTransformer3DModel`` built on ``device`` with the same seeded weights as ``build_model``
    (float32 where ``from_pretrained`` keeps it), in the configuration of ``spec``'s variant: input and output
    channels, and for a model with CLIP features the image embedder and the image cross-attention's added key and
    value projections (FLF2V: the image tokens' positions). diffusers must be installed."""
    from diffusers import WanTransformer3DModel

    from ..models.naming import diffusers_to_wan

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = WanTransformer3DModel(
                num_attention_heads=spec.num_heads, attention_head_dim=spec.head_dim, text_dim=spec.text_dim,
                freq_dim=spec.freq_dim, ffn_dim=spec.ffn_dim, num_layers=spec.num_layers, **_variant_config(spec),
            )  # fmt: skip
    finally:
        torch.set_default_dtype(previous)
    for name, module in model.named_modules():
        if any(name.endswith(k) or f".{k}" in name for k in model._keep_in_fp32_modules):
            module.float()
    model.scale_shift_table.data = model.scale_shift_table.data.float()
    fill_seeded_(model, seed, rename=diffusers_to_wan)
    return model.eval()
