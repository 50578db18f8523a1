"""Image conditioning of I2V / FLF2V models from what ComfyUI's WanImageToVideo and WanFirstLastFrameToVideo set
in the CONDITIONING extras, made as ComfyUI's Wan2.1 model (``model_base.WAN21``) makes it.

``concat_latent_image`` (the VAE latent of the start / end frames, grey elsewhere) is brought to the latent's height
and width where they differ (``fit_spatial``: centre crop to its aspect, then bilinear, as ComfyUI's
``common_upscale(..., "bilinear", "center")``) and goes through the Wan21 latent format; ``concat_mask`` (1 where the
frames are to be generated) is averaged to one channel unless it has 4 (FLF2V groups 4 video frames per latent frame
itself), inverted, resized likewise, padded with zeros to the latent's frames and repeated to 4 channels; the model's
input is the noise, then the 4 mask channels, then the image latent. ``clip_vision_output``'s penultimate hidden
states are the model's ``clip_fea``.
"""

from __future__ import annotations

import torch

from ..models.spec import WanSpec
from . import latents

MASK_CHANNELS = 4


def model_image_input(
    spec: WanSpec, latent_shape: tuple[int, ...], image: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """The channels an image model of ``spec`` takes beside the noise (``concat_channels``) from ComfyUI's
    ``concat_latent_image`` and ``concat_mask``. For a model that takes no image latent they are made all the same
    (mask and image channels), for the rules to refuse by what they carry (``dax_core.rules.check_request``)."""
    extra = spec.in_dim - spec.latent_channels if spec.takes_image_latent else MASK_CHANNELS + image.shape[1]
    return concat_channels(latent_shape, image, mask, extra)


def concat_channels(
    latent_shape: tuple[int, ...], image: torch.Tensor | None, mask: torch.Tensor | None, extra_channels: int
) -> torch.Tensor:
    """The ``extra_channels`` (mask, then image latent) concatenated to the noise of a latent of ``latent_shape``
    [B, C, T, H, W], float32 on the CPU, batch 1 or B. ``image`` is ComfyUI's (un-normalised) latent, ``mask`` its
    ``concat_mask``; without an image the channels are zeros, as ComfyUI gives them (the rules refuse that on an image
    model: ``dax_core.rules.check_request``)."""
    batch, _, frames, height, width = latent_shape
    size = (frames, height, width)
    if image is None:
        return torch.zeros(1, extra_channels, *size)
    image = fit_spatial("concat_latent_image", image.detach().to("cpu", torch.float32), latent_shape)
    if image.shape[2] != frames:
        raise ValueError(
            f"concat_latent_image has {image.shape[2]} latent frames, the latent {frames}: give WanImageToVideo the "
            "length of the latent it makes (connect its latent output to the sampler)"
        )
    step = latents.LATENT_CHANNELS  # the Wan2.1 VAE's latent, as ComfyUI's WAN21 model's latent format
    groups = [latents.normalize(image[:, i : i + step], step) for i in range(0, image.shape[1], step)]
    image = torch.cat(groups, dim=1)[:, : extra_channels - MASK_CHANNELS]
    image = _batch(image, batch, "concat_latent_image")
    if mask is None:
        mask = torch.zeros(1, MASK_CHANNELS, *size)
    else:
        mask = mask.detach().to("cpu", torch.float32)
        if mask.ndim != 5:
            raise ValueError(f"concat_mask must be [B, 1 or 4, frames, height, width], got {tuple(mask.shape)}")
        if mask.shape[1] != MASK_CHANNELS:
            mask = mask.mean(dim=1, keepdim=True)
        mask = fit_spatial("concat_mask", 1.0 - mask, latent_shape)
        if mask.shape[2] < frames:
            mask = torch.nn.functional.pad(mask, (0, 0, 0, 0, 0, frames - mask.shape[2]))
        if mask.shape[1] == 1:
            mask = mask.repeat(1, MASK_CHANNELS, 1, 1, 1)
        mask = _batch(mask, batch, "concat_mask")
    if image.shape[0] != mask.shape[0]:
        image, mask = image.expand(batch, -1, -1, -1, -1), mask.expand(batch, -1, -1, -1, -1)
    return torch.cat((mask, image), dim=1)


def fit_spatial(name: str, t: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """``t`` [B, C, T, h, w] at the latent's height and width: unchanged where they match, else cropped about its
    centre to the latent's aspect ratio and resized bilinearly, frame by frame (ComfyUI's ``common_upscale`` with
    "bilinear" and "center", which its WAN21 model applies to the image conditioning)."""
    if t.ndim != 5:
        raise ValueError(f"{name} must be [B, channels, frames, height, width], got {tuple(t.shape)}")
    height, width = latent_shape[-2:]
    old_h, old_w = t.shape[-2:]
    if (old_h, old_w) == (height, width):
        return t
    old_aspect, new_aspect = old_w / old_h, width / height
    x = round((old_w - old_w * (new_aspect / old_aspect)) / 2) if old_aspect > new_aspect else 0
    y = round((old_h - old_h * (old_aspect / new_aspect)) / 2) if old_aspect < new_aspect else 0
    cropped = t[..., y : old_h - y, x : old_w - x]
    b, c, f = cropped.shape[:3]
    frames = cropped.transpose(1, 2).reshape(b * f, c, *cropped.shape[-2:])
    resized = torch.nn.functional.interpolate(frames, size=(height, width), mode="bilinear")
    return resized.reshape(b, f, c, height, width).transpose(1, 2)


def _batch(t: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if t.shape[0] in (1, batch):
        return t
    raise ValueError(f"{name} has batch {t.shape[0]}, the latent {batch}: use batch 1 or the latent's batch")
