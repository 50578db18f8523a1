"""The callables the samplers take: the denoiser, the per-step callback and the noise of ancestral steps."""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
"""``(x, sigma) -> x0`` (ComfyUI's convention; for a flow model ``x0 = x - sigma * velocity``)."""

StepCallback = Callable[[int, int, torch.Tensor], None]
"""Called after every step with (step index, total steps, the latent at the sigma that step reached)."""

NoiseSampler = Callable[[], torch.Tensor]
"""Fresh noise of the latent's shape, dtype and device, one draw per call (ComfyUI's ``default_noise_sampler``)."""
