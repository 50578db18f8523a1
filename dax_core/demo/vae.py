"""Random Wan VAEs: stand-ins for ``wan_2.1_vae.safetensors`` and ``wan2.2_vae.safetensors`` in tests and the
no-weights demo.

The key/shape schemas are written here from the architectures: Wan2.1's VAE (as ComfyUI builds it in
``comfy/ldm/wan/vae.py``: dim 96, z_dim 16, dim_mult [1, 2, 4, 4], two residual blocks per level, temporal
downsampling [False, True, True], no attention outside the middle blocks) and Wan2.2's (``vae2_2.py``: 2 x 2 pixel
patches in and out, so 12 image channels; encoder dim 160, decoder dim 256, z_dim 48, the levels grouped as
``downsamples.{level}.downsamples.{block}``, resampling that keeps its channels). ComfyUI-tier tests check both
against ComfyUI's modules, whose fixed sizes are why the Wan2.2 one is full size (~705 M parameters, 1.4 GB in bf16).
Weights are random, scaled so that decoding stays finite and images are mid-grey noise.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

log = logging.getLogger(__name__)

Schema = dict[str, tuple[int, ...]]


class _SchemaBuilder:
    def __init__(self) -> None:
        self.schema: Schema = {}

    def conv(self, name: str, c_in: int, c_out: int, kernel: tuple[int, ...]) -> None:
        self.schema[f"{name}.weight"] = (c_out, c_in, *kernel)
        self.schema[f"{name}.bias"] = (c_out,)

    def rms_norm(self, name: str, dim: int, images: bool = False) -> None:
        self.schema[f"{name}.gamma"] = (dim, 1, 1) if images else (dim, 1, 1, 1)

    def residual(self, name: str, c_in: int, c_out: int) -> None:
        self.rms_norm(f"{name}.residual.0", c_in)
        self.conv(f"{name}.residual.2", c_in, c_out, (3, 3, 3))
        self.rms_norm(f"{name}.residual.3", c_out)
        self.conv(f"{name}.residual.6", c_out, c_out, (3, 3, 3))
        if c_in != c_out:
            self.conv(f"{name}.shortcut", c_in, c_out, (1, 1, 1))

    def attention(self, name: str, dim: int) -> None:
        self.rms_norm(f"{name}.norm", dim, images=True)
        self.conv(f"{name}.to_qkv", dim, dim * 3, (1, 1))
        self.conv(f"{name}.proj", dim, dim, (1, 1))

    def middle(self, name: str, dim: int) -> None:
        self.residual(f"{name}.0", dim, dim)
        self.attention(f"{name}.1", dim)
        self.residual(f"{name}.2", dim, dim)

    def resample(self, name: str, dim: int, up: bool, temporal: bool, halve: bool = True) -> None:
        self.conv(f"{name}.resample.1", dim, dim // 2 if up and halve else dim, (3, 3))
        if temporal:
            self.conv(f"{name}.time_conv", dim, dim * 2 if up else dim, (3, 1, 1))


def wan_vae_schema(
    dim: int = 96,
    z_dim: int = 16,
    dim_mult: tuple[int, ...] = (1, 2, 4, 4),
    num_res_blocks: int = 2,
    temporal_downsample: tuple[bool, ...] = (False, True, True),
) -> Schema:
    """Every parameter of a Wan2.1 VAE with its shape (defaults: Wan2.1's released VAE)."""
    b = _SchemaBuilder()
    levels = len(dim_mult)

    dims = [dim * m for m in (1, *dim_mult)]
    b.conv("encoder.conv1", 3, dims[0], (3, 3, 3))
    index = 0
    for i, (c_in, c_out) in enumerate(itertools.pairwise(dims)):
        for _ in range(num_res_blocks):
            b.residual(f"encoder.downsamples.{index}", c_in, c_out)
            index, c_in = index + 1, c_out
        if i != levels - 1:
            b.resample(f"encoder.downsamples.{index}", c_out, up=False, temporal=temporal_downsample[i])
            index += 1
    b.middle("encoder.middle", dims[-1])
    b.rms_norm("encoder.head.0", dims[-1])
    b.conv("encoder.head.2", dims[-1], z_dim * 2, (3, 3, 3))

    b.conv("conv1", z_dim * 2, z_dim * 2, (1, 1, 1))
    b.conv("conv2", z_dim, z_dim, (1, 1, 1))

    dims = [dim * m for m in (dim_mult[-1], *dim_mult[::-1])]
    temporal_upsample = temporal_downsample[::-1]
    b.conv("decoder.conv1", z_dim, dims[0], (3, 3, 3))
    b.middle("decoder.middle", dims[0])
    index = 0
    for i, (c_in, c_out) in enumerate(itertools.pairwise(dims)):
        if i > 0:  # the previous level's upsampling halved the channels
            c_in //= 2
        for _ in range(num_res_blocks + 1):
            b.residual(f"decoder.upsamples.{index}", c_in, c_out)
            index, c_in = index + 1, c_out
        if i != levels - 1:
            b.resample(f"decoder.upsamples.{index}", c_out, up=True, temporal=temporal_upsample[i])
            index += 1
    b.rms_norm("decoder.head.0", dims[-1])
    b.conv("decoder.head.2", dims[-1], 3, (3, 3, 3))
    return b.schema


def wan22_vae_schema(
    dim: int = 160,
    decoder_dim: int = 256,
    z_dim: int = 48,
    dim_mult: tuple[int, ...] = (1, 2, 4, 4),
    num_res_blocks: int = 2,
    temporal_downsample: tuple[bool, ...] = (False, True, True),
    patch: int = 2,
) -> Schema:
    """Every parameter of a Wan2.2 VAE with its shape (defaults: Wan2.2's released VAE, as ComfyUI builds it)."""
    b = _SchemaBuilder()
    levels = len(dim_mult)
    pixels = 3 * patch * patch

    dims = [dim * m for m in (1, *dim_mult)]
    b.conv("encoder.conv1", pixels, dims[0], (3, 3, 3))
    for i, (c_in, c_out) in enumerate(itertools.pairwise(dims)):
        level = f"encoder.downsamples.{i}.downsamples"
        for j in range(num_res_blocks):
            b.residual(f"{level}.{j}", c_in if j == 0 else c_out, c_out)
        if i != levels - 1:
            b.resample(f"{level}.{num_res_blocks}", c_out, up=False, temporal=temporal_downsample[i])
    b.middle("encoder.middle", dims[-1])
    b.rms_norm("encoder.head.0", dims[-1])
    b.conv("encoder.head.2", dims[-1], z_dim * 2, (3, 3, 3))

    b.conv("conv1", z_dim * 2, z_dim * 2, (1, 1, 1))
    b.conv("conv2", z_dim, z_dim, (1, 1, 1))

    dims = [decoder_dim * m for m in (dim_mult[-1], *dim_mult[::-1])]
    temporal_upsample = temporal_downsample[::-1]
    b.conv("decoder.conv1", z_dim, dims[0], (3, 3, 3))
    b.middle("decoder.middle", dims[0])
    for i, (c_in, c_out) in enumerate(itertools.pairwise(dims)):
        level = f"decoder.upsamples.{i}.upsamples"
        for j in range(num_res_blocks + 1):
            b.residual(f"{level}.{j}", c_in if j == 0 else c_out, c_out)
        if i != levels - 1:
            b.resample(f"{level}.{num_res_blocks + 1}", c_out, up=True, temporal=temporal_upsample[i], halve=False)
    b.rms_norm("decoder.head.0", dims[-1])
    b.conv("decoder.head.2", dims[-1], pixels, (3, 3, 3))
    return b.schema


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if name.endswith(".gamma"):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return torch.zeros(shape)
    fan_in = math.prod(shape[1:])
    # Variance-preserving convolutions; residual branches and attention outputs enter the stream damped.
    gain = 0.3 if name.endswith((".residual.6.weight", ".proj.weight")) else 1.0
    return torch.randn(shape, generator=gen) * (gain / math.sqrt(fan_in))


def _write(path: str | Path, schema: Schema, what: str, seed: int) -> Path:
    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: _random_tensor(name, shape, gen).to(torch.bfloat16) for name, shape in schema.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", "dax_demo": f"random {what}, seed {seed}"})
    log.info("wrote a random %s to %s", what, path)
    return path


def write_random_wan_vae(path: str | Path, seed: int = 0) -> Path:
    """Write a random bf16 Wan2.1 VAE (about 250 MB) to ``path``; returns the path."""
    return _write(path, wan_vae_schema(), "Wan2.1 VAE", seed)


def write_random_wan22_vae(path: str | Path, seed: int = 0) -> Path:
    """Write a random bf16 Wan2.2 VAE (48 latent channels, about 1.4 GB) to ``path``; returns the path."""
    return _write(path, wan22_vae_schema(), "Wan2.2 VAE", seed)
