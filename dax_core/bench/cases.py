"""What a benchmark runs: a Wan2.1 size and a video size, with the FLOPs of one forward at that size."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..models.spec import WAN21_T2V_1_3B, WAN21_T2V_14B, WanSpec

TEXT_TOKENS = 512
"""Text tokens of a prompt as Wan2.1 pads it (umt5-xxl, 512): the cross-attention's key length."""

TINY = WanSpec(64, 2, 4, 128, text_dim=32)
"""A two-layer model for smoke tests on a CPU."""

MODELS: dict[str, WanSpec] = {"14b": WAN21_T2V_14B, "1.3b": WAN21_T2V_1_3B, "tiny": TINY}
DEFAULT_VIDEO: dict[str, str] = {"14b": "1280x720x81", "1.3b": "832x480x81", "tiny": "64x64x9"}


@dataclass(frozen=True)
class Case:
    """One forward of ``spec`` on a video of ``width`` x ``height`` pixels and ``frames`` frames (batch 1)."""

    name: str
    spec: WanSpec
    width: int
    height: int
    frames: int

    def __post_init__(self) -> None:
        step = 8 * self.spec.patch_size[1]
        if self.width % step or self.height % step or self.width <= 0 or self.height <= 0:
            raise ValueError(f"video {self.width}x{self.height}: width and height must be positive multiples of {step}")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"{self.frames} frames: Wan2.1 takes 4k + 1 frames (81, 49, 33, ...)")

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        return (1, self.spec.in_dim, (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8)

    @property
    def tokens(self) -> int:
        _, _, f, h, w = self.latent_shape
        pt, ph, pw = self.spec.patch_size
        return (f // pt) * (h // ph) * (w // pw)

    def flops(self) -> dict[str, float]:
        """FLOPs of one forward (one CFG branch) in the block stack: linear layers, self- and cross-attention."""
        s, d, f, n = self.tokens, self.spec.dim, self.spec.ffn_dim, self.spec.num_layers
        linear = 2 * s * (4 * d * d + 2 * d * d + 2 * d * f) * n + 2 * TEXT_TOKENS * 2 * d * d * n
        self_attn = 4 * s * s * d * n
        cross_attn = 4 * s * TEXT_TOKENS * d * n
        return {"linear": linear, "self_attention": self_attn, "cross_attention": cross_attn}


def parse_video(text: str) -> tuple[int, int, int]:
    """'1280x720x81' -> (1280, 720, 81)."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*", text)
    if match is None:
        raise ValueError(f"video {text!r} must be WIDTHxHEIGHTxFRAMES, e.g. 1280x720x81")
    width, height, frames = (int(g) for g in match.groups())
    return width, height, frames


def case_for(model: str, video: str | None = None) -> Case:
    """The case of a model name (14b, 1.3b, tiny) at ``video`` (default: the model's usual size)."""
    if model not in MODELS:
        raise ValueError(f"model {model!r} is not one of {', '.join(MODELS)}")
    video = video or DEFAULT_VIDEO[model]
    width, height, frames = parse_video(video)
    spec = MODELS[model]
    label = "Wan2.1-T2V-14B" if model == "14b" else "Wan2.1-T2V-1.3B" if model == "1.3b" else "tiny Wan"
    return Case(f"{label} {width}x{height}x{frames}", spec, width, height, frames)
