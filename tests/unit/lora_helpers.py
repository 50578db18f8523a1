"""Shared pieces of the LoRA tests: tiny base models and LoRAs written to files, and a float64 merge reference."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from dax_core.lora import lora_ref
from dax_core.lora.tiny import in_format, random_lora
from dax_core.models.spec import WanSpec
from dax_core.models.tiny import random_state_dict, stored_state_dict, write_state_dict
from dax_core.recipe import Recipe

SPEC = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=32, freq_dim=32)


def write_base(folder: Path, spec: WanSpec = SPEC, seed: int = 0, dtype: str = "fp32") -> tuple[dict, Path]:
    """Random float32 weights of ``spec`` (Wan names) and a file holding them stored as ``dtype``."""
    state = random_state_dict(spec, seed)
    path = write_state_dict(stored_state_dict(state, dtype), folder / f"base-{seed}-{dtype}.safetensors",
                            num_heads=spec.num_heads)  # fmt: skip
    return state, path


def write_lora(path: Path, tensors: Mapping[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def lora_file(folder: Path, fmt: str = "lightx2v", spec: WanSpec = SPEC, seed: int = 1, **kwargs) -> tuple[dict, Path]:
    """``random_lora`` (Wan-named components) and a float32 file of it in ``fmt``."""
    components = random_lora(spec, seed=seed, **kwargs)
    return components, write_lora(folder / f"lora-{fmt}-{seed}.safetensors", in_format(components, fmt))


def with_loras(base: Path, *loras: tuple[Path, float], **recipe) -> Recipe:
    return Recipe(str(base), loras=tuple(lora_ref(path, strength) for path, strength in loras), **recipe)


def merged_f64(state: Mapping[str, torch.Tensor], loras: list[tuple[Mapping[str, torch.Tensor], float]]):
    """The float64 merge of Wan-named LoRA components into ``state``: W + sum(strength * (alpha / rank) * up @ down)
    + strength * diff, by the meaning of each key (independent of DAX's key mapping)."""
    out = {name: t.double().clone() for name, t in state.items()}
    for lora, strength in loras:
        for key, t in lora.items():
            if key.endswith(".lora_up.weight"):
                module = key.removesuffix(".lora_up.weight")
                up, down = t.double().flatten(1), lora[f"{module}.lora_down.weight"].double().flatten(1)
                alpha = lora.get(f"{module}.alpha")
                scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
                target = f"{module}.weight"
                out[target] += strength * scale * (up @ down).reshape(out[target].shape)
            elif key.endswith(".diff_b"):
                out[f"{key.removesuffix('.diff_b')}.bias"] += strength * t.double()
            elif key.endswith(".diff_m"):
                out[f"{key.removesuffix('.diff_m')}.modulation"] += strength * t.double()
            elif key.endswith(".diff"):
                out[f"{key.removesuffix('.diff')}.weight"] += strength * t.double()
    return out
