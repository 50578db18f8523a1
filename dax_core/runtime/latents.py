"""Wan latent space conventions shared with ComfyUI: normalisation and the seeded initial noise.

The statistics are chosen by the latent channels the model denoises (``WanSpec.latent_channels``): 16 for the Wan2.1
VAE (Wan2.1 and the Wan2.2 A14B experts), 48 for the Wan2.2 VAE (TI2V 5B), as ComfyUI's Wan21 and Wan22 latent
formats hold them.
"""

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


# Per-channel statistics of the Wan2.2 VAE latent (the values ComfyUI's Wan22 latent format uses).
WAN22_LATENT_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
WAN22_LATENT_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip

STATISTICS: dict[int, tuple[tuple[float, ...], tuple[float, ...]]] = {
    len(WAN21_LATENT_MEAN): (WAN21_LATENT_MEAN, WAN21_LATENT_STD),
    len(WAN22_LATENT_MEAN): (WAN22_LATENT_MEAN, WAN22_LATENT_STD),
}
"""(mean, std) per channel, by the latent's channel count."""


def _stats(latent: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    if channels not in STATISTICS or latent.ndim != 5 or latent.shape[1] != channels:
        known = " or ".join(str(c) for c in STATISTICS)
        raise ValueError(
            f"a latent of shape {tuple(latent.shape)} is not a [B, {channels}, frames, height, width] video latent of "
            f"the model's VAE (Wan VAE latents have {known} channels)"
        )
    mean, std = STATISTICS[channels]
    shape = (1, channels, 1, 1, 1)
    return (
        torch.tensor(mean, dtype=latent.dtype, device=latent.device).view(shape),
        torch.tensor(std, dtype=latent.dtype, device=latent.device).view(shape),
    )


def normalize(latent: torch.Tensor, channels: int) -> torch.Tensor:
    """VAE latent of ``channels`` channels (``WanSpec.latent_channels``) -> the space the DiT works in."""
    mean, std = _stats(latent, channels)
    return (latent - mean) / std


def denormalize(x: torch.Tensor, channels: int) -> torch.Tensor:
    """DiT space -> VAE latent (what ComfyUI's VAEDecode expects)."""
    mean, std = _stats(x, channels)
    return x * std + mean


def initial_noise(shape: torch.Size | tuple[int, ...], seed: int) -> torch.Tensor:
    """The same noise as ComfyUI's KSampler for this seed: a CPU generator, float32 ``randn`` of the latent shape."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(tuple(shape), dtype=torch.float32, generator=generator, device="cpu")
