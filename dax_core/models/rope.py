"""Wan's 3-D rotary position embedding: frame, height and width axes, each with its own frequencies."""

from __future__ import annotations

import torch

from .spec import WanSpec


def _axis_angles(positions: torch.Tensor, channels: int, theta: float) -> torch.Tensor:
    exponents = torch.arange(0, channels, 2, dtype=torch.float64) / channels
    inv_freq = 1.0 / (theta**exponents)
    return torch.outer(positions.to(torch.float64), inv_freq)


def rope_angles(spec: WanSpec, grid: tuple[int, int, int], theta: float = 10000.0) -> torch.Tensor:
    """Angles [F*H*W, head_dim/2] (float64) for a token grid of (frames, height, width) patches."""
    f, h, w = grid
    axes = spec.rope_axes
    parts = []
    for axis, (length, channels) in enumerate(zip((f, h, w), axes, strict=True)):
        ang = _axis_angles(torch.arange(length), channels, theta)  # [length, channels/2]
        shape = [1, 1, 1, ang.shape[-1]]
        shape[axis] = length
        parts.append(ang.view(shape).expand(f, h, w, -1))
    return torch.cat(parts, dim=-1).reshape(f * h * w, -1)


def rope_cos_sin(
    spec: WanSpec, grid: tuple[int, int, int], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [tokens, head_dim/2] in float32 on ``device``."""
    ang = rope_angles(spec, grid)
    return ang.cos().float().to(device), ang.sin().float().to(device)
