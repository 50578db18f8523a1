"""Small random Wan DiTs of every variant DAX runs, written in every on-disk format the loader reads (for tests
and demos).

``python -m dax_core tiny-model --out FILE [--variant t2v|i2v|flf2v|ti2v --dim 64 --layers 2 --heads 4 --ffn 128
--text-dim 768 --clip-dim 1280 --naming wan|comfy|diffusers --dtype bf16|fp16|fp32|fp8_e4m3fn|fp8_scaled --seed 0
--sharded]``

I2V and FLF2V models take 36 input channels and CLIP-vision features ``--clip-dim`` wide (1280: what ComfyUI's
CLIP ViT-H gives); FLF2V's positional embedding covers two images of 257 tokens. A TI2V model (Wan2.2 TI2V 5B's
kind) takes and predicts the Wan2.2 VAE's 48 latent channels; a Wan2.2 T2V A14B expert has a t2v model's shapes, an
I2V A14B one an i2v model's with ``--clip-dim 0`` (36 input channels, no image embedding nor image cross-attention).

Weights are random with the scales of a trained model (linears std 1/sqrt(fan_in), modulation
std 1/sqrt(dim), norm weights near 1) so a forward pass stays finite. Every file carries the
``dax.num_heads`` metadata, since the head count of a small model cannot be read from its shapes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .detect import NUM_HEADS_METADATA
from .naming import COMFY_PREFIXES, wan_to_diffusers
from .spec import CLIP_IMAGE_TOKENS, WAN22_LATENT_CHANNELS, WanSpec
from .wan import WanModel
from .weight_conversion import is_block_linear_weight, quantize_fp8
from .weight_files import DIFFUSERS_CONFIG, DIFFUSERS_INDEX

logger = logging.getLogger(__name__)

VARIANTS = ("t2v", "i2v", "flf2v", "ti2v")
NAMINGS = ("wan", "comfy", "diffusers")  # comfy: wan naming under the model.diffusion_model. prefix
DTYPES = ("bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_scaled")
_PLAIN_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_SHARD_NAME = "diffusion_pytorch_model-{:05d}-of-{:05d}.safetensors"
_NUM_SHARDS = 2


def random_state_dict(spec: WanSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Float32 random weights of a model of ``spec``, in Wan naming; the same seed gives the same weights."""
    generator = torch.Generator().manual_seed(seed)
    model = WanModel(spec, device=torch.device("meta"))
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        noise = torch.randn(param.shape, generator=generator)
        if leaf == "modulation":
            out[name] = noise / math.sqrt(spec.dim)
        elif leaf == "emb_pos":  # FLF2V's image positions, added to unit-scale CLIP features
            out[name] = noise * 0.1
        elif leaf == "weight" and isinstance(module, (nn.Linear, nn.Conv3d)):
            out[name] = noise / math.sqrt(param[0].numel())
        elif leaf == "bias":
            out[name] = noise * 0.02
        else:  # RMSNorm / LayerNorm weights
            out[name] = 1 + noise * 0.1
    return out


def stored_state_dict(state_dict: Mapping[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """``state_dict`` (Wan naming) as a file of ``dtype`` stores it.

    fp8_e4m3fn: the blocks' linear weights cast to float8, the rest bf16. fp8_scaled (ComfyUI): those
    weights quantized with a per-tensor scale amax/448 stored as ``X.scale_weight``, plus the
    ``scaled_fp8`` marker, the rest bf16.
    """
    if dtype in _PLAIN_DTYPES:
        return {name: t.to(_PLAIN_DTYPES[dtype]) for name, t in state_dict.items()}
    if dtype not in ("fp8_e4m3fn", "fp8_scaled"):
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        if not is_block_linear_weight(name):
            out[name] = t.to(torch.bfloat16)
        elif dtype == "fp8_e4m3fn":
            out[name] = t.to(torch.float8_e4m3fn)
        else:
            out[name], out[name.removesuffix(".weight") + ".scale_weight"] = quantize_fp8(t)
    if dtype == "fp8_scaled":
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def write_state_dict(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    naming: str = "wan",
    num_heads: int | None = None,
    sharded: bool = False,
) -> Path:
    """Write Wan-named ``tensors`` to ``path`` in ``naming``; sharded: a diffusers folder (index + 2 shards).

    ``num_heads`` goes into the ``dax.num_heads`` metadata (and a sharded folder's config.json).
    """
    if naming not in NAMINGS:
        raise ValueError(f"naming {naming!r} is not one of {', '.join(NAMINGS)}")
    if sharded and naming != "diffusers":
        raise ValueError("sharded files are diffusers folders: use naming='diffusers'")
    path = Path(path)
    if naming == "diffusers":
        tensors = {(name if name == "scaled_fp8" else wan_to_diffusers(name)): t for name, t in tensors.items()}
    elif naming == "comfy":
        tensors = {COMFY_PREFIXES[0] + name: t for name, t in tensors.items()}
    metadata = {NUM_HEADS_METADATA: str(num_heads)} if num_heads else None
    if not sharded:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(dict(tensors), str(path), metadata=metadata)
        return path
    path.mkdir(parents=True, exist_ok=True)
    names = list(tensors)
    cut = len(names) // _NUM_SHARDS
    weight_map: dict[str, str] = {}
    for i, part in enumerate((names[:cut], names[cut:])):
        shard = _SHARD_NAME.format(i + 1, _NUM_SHARDS)
        save_file({name: tensors[name] for name in part}, str(path / shard), metadata=metadata)
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / DIFFUSERS_INDEX).write_text(json.dumps(index, indent=2))
    return path


def diffusers_config(spec: WanSpec) -> dict:
    """The config.json diffusers' WanTransformer3DModel reads for a model of ``spec``."""
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(spec.patch_size),
        "num_attention_heads": spec.num_heads,
        "attention_head_dim": spec.head_dim,
        "in_channels": spec.in_dim,
        "out_channels": spec.out_dim,
        "text_dim": spec.text_dim,
        "freq_dim": spec.freq_dim,
        "ffn_dim": spec.ffn_dim,
        "num_layers": spec.num_layers,
        "cross_attn_norm": spec.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads",
        "eps": spec.eps,
        "image_dim": spec.clip_dim if spec.takes_clip else None,
        "added_kv_proj_dim": spec.dim if spec.takes_clip else None,
        "pos_embed_seq_len": spec.image_pos_tokens or None,
        "rope_max_seq_len": 1024,
    }


def tiny_spec(
    variant: str = "t2v",
    *,
    dim: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    ffn_dim: int = 128,
    text_dim: int = 768,
    freq_dim: int = 256,
    clip_dim: int = 1280,
) -> WanSpec:
    """The spec of a small model of ``variant`` (one of ``VARIANTS``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
    image = {} if variant == "t2v" else {"model_type": variant, "in_dim": 36, "clip_dim": clip_dim}
    if variant == "ti2v":
        image = {"model_type": variant, "in_dim": WAN22_LATENT_CHANNELS, "out_dim": WAN22_LATENT_CHANNELS}
    if variant == "flf2v":
        image["image_pos_tokens"] = 2 * CLIP_IMAGE_TOKENS
    return WanSpec(
        dim=dim, num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim, text_dim=text_dim, freq_dim=freq_dim,
        **image,
    )  # fmt: skip


def write_tiny_model(
    path: str | os.PathLike,
    *,
    variant: str = "t2v",
    dim: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    ffn_dim: int = 128,
    text_dim: int = 768,
    freq_dim: int = 256,
    clip_dim: int = 1280,
    naming: str = "wan",
    dtype: str = "bf16",
    seed: int = 0,
    sharded: bool = False,
) -> Path:
    """Write a random Wan2.1 DiT of ``variant``; sharded: a diffusers folder with an index, 2 shards and config.json."""
    spec = tiny_spec(
        variant, dim=dim, num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim, text_dim=text_dim,
        freq_dim=freq_dim, clip_dim=clip_dim,
    )  # fmt: skip
    tensors = stored_state_dict(random_state_dict(spec, seed), dtype)
    path = write_state_dict(tensors, path, naming=naming, num_heads=num_heads, sharded=sharded)
    if sharded:
        (path / DIFFUSERS_CONFIG).write_text(json.dumps(diffusers_config(spec), indent=2))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dax_core tiny-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="file to write (a folder with --sharded)")
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="t2v",
        help="text-, image-, first-last-frame-to-video, or Wan2.2 text-image-to-video (48 channels)",
    )
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ffn", type=int, default=128)
    parser.add_argument("--text-dim", type=int, default=768)
    parser.add_argument("--freq-dim", type=int, default=256)
    parser.add_argument(
        "--clip-dim",
        type=int,
        default=1280,
        help="CLIP-vision feature width (i2v, flf2v); 0 with i2v: a Wan2.2 I2V A14B expert (no CLIP)",
    )
    parser.add_argument("--naming", choices=NAMINGS, default="wan")
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sharded", action="store_true", help="a diffusers folder with an index and 2 shards")
    args = parser.parse_args(argv)
    try:
        path = write_tiny_model(
            args.out,
            variant=args.variant,
            dim=args.dim,
            num_layers=args.layers,
            num_heads=args.heads,
            ffn_dim=args.ffn,
            text_dim=args.text_dim,
            freq_dim=args.freq_dim,
            clip_dim=args.clip_dim,
            naming=args.naming,
            dtype=args.dtype,
            seed=args.seed,
            sharded=args.sharded,
        )
    except ValueError as e:
        parser.error(str(e))
    size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir()))
    logger.info(
        "wrote %s: Wan %s DiT dim %d, %d layers, %d heads, ffn %d, text %d (%s naming, %s, seed %d, %.1f MB)",
        path,
        args.variant,
        args.dim,
        args.layers,
        args.heads,
        args.ffn,
        args.text_dim,
        args.naming,
        args.dtype,
        args.seed,
        size / 2**20,
    )
    return 0
