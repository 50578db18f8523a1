"""A latent's noise mask (ComfyUI's ``noise_mask``), applied as ComfyUI's samplers apply it.

A mask of 1 is denoised, 0 is kept: Wan22ImageToVideoLatent sets 0 on the first latent frame, which holds the encoded
start image. As ComfyUI's KSamplerX0Inpaint does around the model at every step, the kept part of the model's input is
the input latent (noised to the step's sigma for a model that does not see the mask; as it is for Wan2.2 TI2V, whose
WAN22 model returns the latent unscaled), and the kept part of the prediction is the input latent. A model with
per-token timesteps (``WanSpec.per_token_timesteps``) also gets, per latent frame, the step's timestep times the mean
of the mask over that frame's channels and pixels (ComfyUI's ``WAN22.process_timestep``): 0 on a given first frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
"""(x, sigma) -> the denoised prediction x0, in model space."""


def start_frames_kept(start: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A latent of ``shape`` [B, C, T, H, W] whose first frames are ``start`` (the VAE latent of a start image) and
    its noise mask keeping them, as ComfyUI's Wan22ImageToVideoLatent makes them (Wan2.2 TI2V 5B)."""
    start = start.detach().to("cpu", torch.float32)
    batch, channels, frames, height, width = shape
    if start.ndim == 4:
        start = start.unsqueeze(0)
    fits = start.ndim == 5 and start.shape[0] in (1, batch) and start.shape[1] == channels
    if not fits or tuple(start.shape[3:]) != (height, width) or not 1 <= start.shape[2] <= frames:
        raise ValueError(
            f"the start latent is {tuple(start.shape)}; for a latent {tuple(shape)} it must be [1 or {batch}, "
            f"{channels}, 1 to {frames} frames, {height}, {width}]: encode the start image with the model's VAE at "
            "the video's width and height"
        )
    latent = torch.zeros(tuple(shape))
    latent[:, :, : start.shape[2]] = start
    mask = torch.ones(batch, 1, frames, height, width)
    mask[:, :, : start.shape[2]] = 0.0
    return latent, mask


def check_noise_mask(mask: torch.Tensor, latent_shape: Sequence[int]) -> None:
    """Raise ValueError, saying what fits, unless ``mask`` can be a noise mask of a latent of ``latent_shape``."""
    if not isinstance(mask, torch.Tensor) or not mask.is_floating_point():
        raise ValueError(f"the latent's noise_mask must be a float tensor, got {type(mask).__name__}")
    ok = mask.ndim in (3, 4) or (mask.ndim == 5 and mask.shape[1] in (1, latent_shape[1]))
    if not ok or mask.numel() == 0:
        raise ValueError(
            f"the latent's noise_mask has shape {tuple(mask.shape)}; for a latent {tuple(latent_shape)} it must be "
            f"[B, 1 or {latent_shape[1]}, frames, height, width] (Wan22ImageToVideoLatent's) or [frames, height, width]"
        )
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise ValueError("the latent's noise_mask must hold values between 0 (keep) and 1 (denoise)")


def prepare_mask(mask: torch.Tensor, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """``mask`` as a float32 [B, C, T, H, W] of the latent's ``shape``, as ComfyUI's ``reshape_mask`` makes it:
    trilinear to the latent's frames and pixels, repeated over channels and batch rows."""
    mask = mask.to(device=device, dtype=torch.float32)
    if mask.ndim < 5:
        mask = mask.reshape(1, 1, -1, mask.shape[-2], mask.shape[-1])
    if tuple(mask.shape[2:]) != tuple(shape[2:]):
        mask = F.interpolate(mask, size=tuple(shape[2:]), mode="trilinear")
    if mask.shape[1] < shape[1]:
        mask = mask.repeat(1, shape[1], 1, 1, 1)[:, : shape[1]]
    if mask.shape[0] < shape[0]:
        mask = mask.repeat(math.ceil(shape[0] / mask.shape[0]), 1, 1, 1, 1)
    return mask[: shape[0]]


def frame_timesteps(mask: torch.Tensor, timestep: float) -> torch.Tensor:
    """[B, frames] timesteps: ``timestep`` times the mask's mean over each frame's channels and pixels."""
    return mask.mean(dim=(1, 3, 4)) * timestep


def masked(
    denoise: Denoiser, mask: torch.Tensor, image: torch.Tensor, noise: torch.Tensor, *, keep_clean: bool
) -> Denoiser:
    """``denoise`` with the kept part (mask 0) of its input and of its prediction taken from ``image`` (model space).

    ``keep_clean``: the kept input is ``image`` as it is (Wan2.2 TI2V); else ``image`` noised with ``noise`` to the
    step's sigma, as for any model that does not see the mask.
    """
    keep = 1.0 - mask

    def run(x: torch.Tensor, sigma: float) -> torch.Tensor:
        kept = image if keep_clean else sigma * noise + (1.0 - sigma) * image
        x0 = denoise(x * mask + kept * keep, sigma)
        return x0 * mask + image * keep

    return run
