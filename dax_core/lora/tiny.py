"""Random LoRAs for a Wan DiT, written in the key formats found in the wild (for tests and demos).

``python -m dax_core tiny-lora --model TINY.safetensors --out LORA.safetensors [--rank 4 --alpha A --seed 0
--format lightx2v|comfy_ab|diffusers|kohya|bare]``

The LoRA touches every parameter the way distillation LoRAs do (lightx2v's, CausVid's): a low-rank pair on every
linear layer and on the patch embedding, a full difference on every norm weight (``diff``), on every bias
(``diff_b``) and on every modulation (``diff_m``). The changes are a few percent of the weights' own scale, so a
forward pass stays finite and a key that is not merged shows in the output.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..models.naming import wan_to_diffusers
from ..models.spec import WanSpec
from ..models.wan import WanModel

logger = logging.getLogger(__name__)

FORMATS = ("lightx2v", "comfy_ab", "diffusers", "kohya", "bare")
"""lightx2v: ``diffusion_model.`` + Wan names, lora_up / lora_down, diff, diff_b, diff_m (also ComfyUI's and kijai's
names); comfy_ab: the same with lora_A / lora_B; diffusers: ``transformer.`` + diffusers names, lora_A / lora_B,
lora_B.bias for the biases; kohya: ``lora_unet_`` + Wan names with ``_`` for ``.`` (musubi-tuner); bare: Wan names
without a prefix."""
CHANGE = 0.1  # the size of a change relative to the parameter's own scale


def random_lora(spec: WanSpec, rank: int = 4, alpha: float | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random LoRA for a model of ``spec``, float32, keyed ``<Wan module>.<lora_up.weight | lora_down.weight |
    alpha | diff | diff_b | diff_m>`` (the lightx2v layout without a prefix; ``in_format`` renames it)."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    g = torch.Generator().manual_seed(seed)
    model = WanModel(spec, device=torch.device("meta"))
    scale = 1.0 if alpha is None else alpha / rank
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            fan_in = math.prod(weight.shape[1:])
            out[f"{name}.lora_down.weight"] = torch.randn((rank, *weight.shape[1:]), generator=g) / math.sqrt(fan_in)
            up = torch.randn((weight.shape[0], rank, *[1] * (weight.ndim - 2)), generator=g)
            out[f"{name}.lora_up.weight"] = up * (CHANGE / math.sqrt(rank) / scale)
            if alpha is not None:
                out[f"{name}.alpha"] = torch.tensor(float(alpha))
        elif isinstance(weight, nn.Parameter):  # a norm: weights near 1
            out[f"{name}.diff"] = torch.randn(weight.shape, generator=g) * CHANGE
        if getattr(module, "bias", None) is not None:
            out[f"{name}.diff_b"] = torch.randn(module.bias.shape, generator=g) * 0.02 * CHANGE
        if isinstance(getattr(module, "modulation", None), nn.Parameter):
            shape = module.modulation.shape
            out[f"{name}.diff_m"] = torch.randn(shape, generator=g) * (CHANGE / math.sqrt(spec.dim))
    return out


_LOW_RANK = {".lora_up.weight": ".lora_B.weight", ".lora_down.weight": ".lora_A.weight"}


def in_format(lora: Mapping[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """``random_lora``'s tensors under the key names of ``fmt`` (one of ``FORMATS``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    return {_key(key, fmt): t for key, t in lora.items()}


def _key(key: str, fmt: str) -> str:
    module, suffix = _split(key)
    if fmt == "bare":
        return key
    if fmt == "lightx2v":
        return f"diffusion_model.{key}"
    if fmt == "comfy_ab":
        return f"diffusion_model.{module}{_LOW_RANK.get(suffix, suffix)}"
    if fmt == "kohya":
        return f"lora_unet_{module.replace('.', '_')}{suffix}"
    # diffusers: the modulation is a parameter of its own there (scale_shift_table), the bias change a lora_B bias
    if suffix == ".diff_m":
        return f"transformer.{wan_to_diffusers(f'{module}.modulation')}.diff"
    renamed = wan_to_diffusers(module)
    return f"transformer.{renamed}{'.lora_B.bias' if suffix == '.diff_b' else _LOW_RANK.get(suffix, suffix)}"


def _split(key: str) -> tuple[str, str]:
    for suffix in (".lora_up.weight", ".lora_down.weight", ".alpha", ".diff_b", ".diff_m", ".diff"):
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    raise ValueError(f"{key} is not a key random_lora writes")


def write_tiny_lora(
    path: str | os.PathLike,
    spec: WanSpec,
    *,
    rank: int = 4,
    alpha: float | None = None,
    fmt: str = "lightx2v",
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write ``random_lora(spec, rank, alpha, seed)`` in ``fmt`` to ``path`` (stored as ``dtype``)."""
    tensors = {k: t.to(dtype) for k, t in in_format(random_lora(spec, rank, alpha, seed), fmt).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"dax.lora_format": fmt, "dax.rank": str(rank)})
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from ..models.loading import WeightsError, inspect_weights

    parser = argparse.ArgumentParser(prog="python -m dax_core tiny-lora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the Wan DiT the LoRA is for (its sizes are read from it)")
    parser.add_argument("--out", required=True, help="file to write")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--alpha", type=float, help="write .alpha keys with this value (default: none, scale 1)")
    parser.add_argument("--format", choices=FORMATS, default="lightx2v")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        spec = inspect_weights(args.model).spec
        path = write_tiny_lora(args.out, spec, rank=args.rank, alpha=args.alpha, fmt=args.format, seed=args.seed)
    except (ValueError, WeightsError) as e:
        parser.error(str(e))
    logger.info("wrote %s: rank %d LoRA for %s (%s format, seed %d, %.1f MB)", path, args.rank, spec.name,
                args.format, args.seed, path.stat().st_size / 2**20)  # fmt: skip
    return 0
