"""What a benchmark runs: a Wan model (Wan2.1 T2V and I2V, Wan2.2 TI2V) and a video size, with the FLOPs of one
forward at that size."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..models.spec import CLIP_IMAGE_TOKENS, WAN21_I2V_14B, WAN21_T2V_1_3B, WAN21_T2V_14B, WAN22_TI2V_5B, WanSpec

TEXT_TOKENS = 512
"""Text tokens of a prompt as Wan2.1 pads it (umt5-xxl, 512): the cross-attention's key length."""

TINY = WanSpec(64, 2, 4, 128, text_dim=32)
"""A two-layer model for smoke tests on a CPU."""
TINY_I2V = WanSpec(64, 2, 4, 128, text_dim=32, in_dim=36, model_type="i2v", clip_dim=48)
"""Its image-to-video twin (36 input channels, an image embedding of 48-wide CLIP features)."""
TINY_TI2V = WanSpec(64, 2, 4, 128, text_dim=32, in_dim=48, out_dim=48, model_type="ti2v")
"""Its Wan2.2 TI2V twin (48 latent channels, a timestep per latent frame)."""

MODELS: dict[str, WanSpec] = {
    "14b": WAN21_T2V_14B, "1.3b": WAN21_T2V_1_3B, "i2v-14b": WAN21_I2V_14B, "ti2v-5b": WAN22_TI2V_5B,
    "tiny": TINY, "tiny-i2v": TINY_I2V, "tiny-ti2v": TINY_TI2V,
}  # fmt: skip
DEFAULT_VIDEO: dict[str, str] = {
    "14b": "1280x720x81", "1.3b": "832x480x81", "i2v-14b": "1280x720x81", "ti2v-5b": "1280x704x121",
    "tiny": "64x64x9", "tiny-i2v": "64x64x9", "tiny-ti2v": "64x64x9",
}  # fmt: skip
LABELS: dict[str, str] = {
    "14b": "Wan2.1-T2V-14B", "1.3b": "Wan2.1-T2V-1.3B", "i2v-14b": "Wan2.1-I2V-14B", "ti2v-5b": "Wan2.2-TI2V-5B",
    "tiny": "tiny Wan", "tiny-i2v": "tiny Wan I2V", "tiny-ti2v": "tiny Wan2.2 TI2V",
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One forward of ``spec`` on a video of ``width`` x ``height`` pixels and ``frames`` frames (batch 1).

    The latent is the model's input: 16 channels (T2V), 36 (I2V: noise, mask and image latent) or 48 (Wan2.2 TI2V,
    whose VAE compresses 16x along the height and the width instead of 8x). An image model's forward also takes
    ``image_tokens`` CLIP-vision tokens (one image: 257).
    """

    name: str
    spec: WanSpec
    width: int
    height: int
    frames: int

    def __post_init__(self) -> None:
        step = self.spec.vae_spatial_stride * self.spec.patch_size[1]
        if self.width % step or self.height % step or self.width <= 0 or self.height <= 0:
            raise ValueError(f"video {self.width}x{self.height}: width and height must be positive multiples of {step}")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"{self.frames} frames: Wan takes 4k + 1 frames (81, 121, 49, ...)")

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        stride = self.spec.vae_spatial_stride
        return (1, self.spec.in_dim, (self.frames - 1) // 4 + 1, self.height // stride, self.width // stride)

    @property
    def image_tokens(self) -> int:
        """CLIP-vision tokens the forward takes (0: a model without image cross-attention)."""
        return CLIP_IMAGE_TOKENS if self.spec.takes_clip else 0

    @property
    def frame_tokens(self) -> int:
        """Video tokens of one latent frame (the unit of Wan2.2 TI2V's per-frame timesteps)."""
        _, _, _, h, w = self.latent_shape
        return (h // self.spec.patch_size[1]) * (w // self.spec.patch_size[2])

    @property
    def tokens(self) -> int:
        _, _, f, h, w = self.latent_shape
        pt, ph, pw = self.spec.patch_size
        return (f // pt) * (h // ph) * (w // pw)

    def flops(self) -> dict[str, float]:
        """FLOPs of one forward (one CFG branch) in the block stack: linear layers, self- and cross-attention (an
        image model's cross-attention includes its image tokens' keys and values)."""
        s, d, f, n = self.tokens, self.spec.dim, self.spec.ffn_dim, self.spec.num_layers
        context = TEXT_TOKENS + self.image_tokens
        linear = 2 * s * (4 * d * d + 2 * d * d + 2 * d * f) * n + 2 * context * 2 * d * d * n
        self_attn = 4 * s * s * d * n
        cross_attn = 4 * s * context * d * n
        return {"linear": linear, "self_attention": self_attn, "cross_attention": cross_attn}


def parse_video(text: str) -> tuple[int, int, int]:
    """'1280x720x81' -> (1280, 720, 81)."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*", text)
    if match is None:
        raise ValueError(f"video {text!r} must be WIDTHxHEIGHTxFRAMES, e.g. 1280x720x81")
    width, height, frames = (int(g) for g in match.groups())
    return width, height, frames


def case_for(model: str, video: str | None = None) -> Case:
    """The case of a model name (a key of ``MODELS``) at ``video`` (default: the model's usual size)."""
    if model not in MODELS:
        raise ValueError(f"model {model!r} is not one of {', '.join(MODELS)}")
    video = video or DEFAULT_VIDEO[model]
    width, height, frames = parse_video(video)
    spec = MODELS[model]
    return Case(f"{LABELS[model]} {width}x{height}x{frames}", spec, width, height, frames)
