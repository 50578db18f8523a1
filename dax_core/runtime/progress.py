"""What a sampling run reports while it runs: one ``StepProgress`` per step, and a small latent to preview.

The engine makes these (in one process, and on rank 0 of a worker group, which sends them to the owner); a front
end formats them. Nothing here knows about ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.quantize import QUANTIZED_LINEARS
from ..quant.torchao_linear import TorchaoQuantLinear

PREVIEW_MAX_SIDE = 160
"""The longest side of a preview latent, in latent pixels: a 1280x720 video's latent frame (160 x 90) as it is,
larger ones averaged down. ComfyUI's latent-to-RGB preview draws one pixel per latent pixel."""


@dataclass(frozen=True)
class StepProgress:
    """The sampling loop after one step.

    ``elapsed_s`` and ``first_step_s`` are wall times from the start of the loop, read after the device finished
    the step's work. ``skipped`` names, per branch of the step cache (e.g. "cond", "uncond"), the steps skipped so
    far. ``preview``: when asked for, the middle frame of the current denoised prediction in the model's latent
    space, [batch, channels, 1, h, w] float32 on the CPU (``preview_latent``).
    """

    step: int
    total: int
    elapsed_s: float
    first_step_s: float
    cache: str | None = None
    skipped: tuple[tuple[str, int], ...] = ()
    preview: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.step <= self.total:
            raise ValueError(f"step {self.step} of {self.total}: steps done count from 1 to the total")
        if not 0 <= self.first_step_s <= self.elapsed_s:
            raise ValueError(f"need 0 <= first_step_s <= elapsed_s, got {self.first_step_s} and {self.elapsed_s}")

    @property
    def seconds_per_step(self) -> float:
        """The mean time of the steps after the first (which may include compilation), or the first step's own."""
        if self.step == 1:
            return self.first_step_s
        return (self.elapsed_s - self.first_step_s) / (self.step - 1)

    @property
    def eta_s(self) -> float:
        """Seconds left if the remaining steps take ``seconds_per_step`` each (skipped steps take less)."""
        return (self.total - self.step) * self.seconds_per_step


ProgressCallback = Callable[[StepProgress], None]


def preview_latent(denoised: torch.Tensor, max_side: int = PREVIEW_MAX_SIDE) -> torch.Tensor:
    """The middle frame of ``denoised`` [B, C, T, H, W], averaged down to at most ``max_side`` latent pixels on its
    longest side, as float32 on the CPU: [B, C, 1, h, w]."""
    if denoised.ndim != 5:
        raise ValueError(f"expected a video latent [B, C, T, H, W], got shape {tuple(denoised.shape)}")
    frame = denoised[:, :, denoised.shape[2] // 2].float()
    height, width = frame.shape[-2:]
    if max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        frame = F.adaptive_avg_pool2d(frame, size)
    return frame.unsqueeze(2).cpu()


def describe_model(model: nn.Module) -> tuple[str, ...]:
    """What a built Wan model runs, in words: its attention kernels, its linear layers and compilation."""
    lines = []
    self_attn, cross_attn = getattr(model, "self_attn_fn", None), getattr(model, "cross_attn_fn", None)
    if self_attn is not None:
        if cross_attn is None or cross_attn.kernel == self_attn.kernel:
            lines.append(f"attention: {self_attn.kernel}")
        else:
            lines.append(f"self-attention: {self_attn.kernel}; cross-attention: {cross_attn.kernel}")
    quantized = [m for m in model.modules() if isinstance(m, QUANTIZED_LINEARS)]
    linears = len(quantized) + sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    dtype = str(getattr(model, "compute_dtype", "")).removeprefix("torch.")
    if quantized:
        schemes = sorted({m.qconfig.describe() + (" (torchao)" if isinstance(m, TorchaoQuantLinear) else "")
                          for m in quantized})  # fmt: skip
        lines.append(f"linears: {len(quantized)} of {linears} in {', '.join(schemes)}, the others in {dtype}")
    else:
        lines.append(f"linears: {dtype}")
    compiled = getattr(model, "compiled", None)
    if compiled is not None:
        lines.append(f"compiled: {compiled.described}")
    return tuple(lines)
