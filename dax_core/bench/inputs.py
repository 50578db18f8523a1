"""The inputs of one benchmark forward, seeded: the latent, the timestep, the text embedding of one CFG branch and,
for an image model, its CLIP-vision features; called the way dax_core's ``WanModel`` and diffusers'
``WanTransformer3DModel`` each take them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .cases import TEXT_TOKENS, Case

TIMESTEP = 700.0
"""The timestep of every benchmark forward (Wan's 0..1000 scale): its value does not change the work."""


@dataclass(frozen=True)
class ForwardInputs:
    """``t`` is [1], or [1, frames] for Wan2.2 TI2V (the image-conditioned first latent frame at 0, as ComfyUI's
    WAN22 model derives it from Wan22ImageToVideoLatent's noise mask); ``clip_fea`` is None for a model without
    image cross-attention."""

    x: torch.Tensor
    t: torch.Tensor
    context: torch.Tensor
    clip_fea: torch.Tensor | None
    frame_tokens: int

    def __call__(self, model: Any, **kwargs: Any) -> torch.Tensor:
        """dax_core's forward (``kwargs``: ``branches`` for a step cache)."""
        return model(self.x, self.t, self.context, clip_fea=self.clip_fea, **kwargs)

    def diffusers(self, model: Any, dtype: torch.dtype) -> torch.Tensor:
        """diffusers' forward of the same inputs: the latent in the model's dtype, a per-frame timestep repeated per
        token (diffusers takes [B, tokens]), the CLIP features as ``encoder_hidden_states_image``."""
        t = self.t if self.t.ndim == 1 else self.t.repeat_interleave(self.frame_tokens, dim=1)
        kwargs = {} if self.clip_fea is None else {"encoder_hidden_states_image": self.clip_fea}
        return model(self.x.to(dtype), t, self.context, return_dict=False, **kwargs)[0]


def make_inputs(case: Case, device: torch.device | str, dtype: torch.dtype, seed: int) -> ForwardInputs:
    """Seeded inputs of one forward of ``case``: 512 text tokens (as Wan pads a prompt; diffusers' image models
    also take the text as the last 512 context tokens), one image's 257 CLIP tokens for a model that takes them."""
    spec = case.spec
    g = torch.Generator(device=device).manual_seed(seed + 1)
    x = torch.randn(case.latent_shape, generator=g, device=device)
    context = torch.randn(1, TEXT_TOKENS, spec.text_dim, generator=g, device=device).to(dtype)
    clip_fea = None
    if spec.takes_clip:
        clip_fea = torch.randn(1, case.image_tokens, spec.clip_dim, generator=g, device=device).to(dtype)
    frames = case.latent_shape[2]
    if spec.per_token_timesteps:
        t = torch.full((1, frames), TIMESTEP, device=device)
        t[:, 0] = 0.0
    else:
        t = torch.tensor([TIMESTEP], device=device)
    return ForwardInputs(x, t, context, clip_fea, case.frame_tokens)
