"""Wan2.1 latent space conventions shared with ComfyUI: normalisation and the seeded initial noise."""

from __future__ import annotations

import torch

LATENT_CHANNELS = 16
"""Channels of the Wan2.1 VAE latent."""

# Per-channel statistics of the Wan2.1 VAE latent (the values ComfyUI's Wan21 latent format uses).
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


def _stats(latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, len(WAN21_LATENT_MEAN), 1, 1, 1)
    mean = torch.tensor(WAN21_LATENT_MEAN, dtype=latent.dtype, device=latent.device).view(shape)
    std = torch.tensor(WAN21_LATENT_STD, dtype=latent.dtype, device=latent.device).view(shape)
    return mean, std


def normalize(latent: torch.Tensor) -> torch.Tensor:
    """VAE latent -> the space the DiT works in."""
    mean, std = _stats(latent)
    return (latent - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """DiT space -> VAE latent (what ComfyUI's VAEDecode expects)."""
    mean, std = _stats(x)
    return x * std + mean


def initial_noise(shape: torch.Size | tuple[int, ...], seed: int) -> torch.Tensor:
    """The same noise as ComfyUI's KSampler for this seed: a CPU generator, float32 ``randn`` of the latent shape."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(tuple(shape), dtype=torch.float32, generator=generator, device="cpu")
