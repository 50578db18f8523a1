"""The sampler's live status in ComfyUI: its progress text, the progress bar and latent previews.

The text goes out as ComfyUI's progress-text message to the node (``node_text``). Previews are made by ComfyUI's
own previewer for the model's Wan latent format (Wan21's 16 channels, Wan22's 48), so its preview method setting
(``--preview-method``) decides whether there are any and how they are drawn; with previews off none is asked of the
engine.
"""

from __future__ import annotations

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
import latent_preview
import torch

from dax_core.runtime.engine import SampleResult
from dax_core.runtime.progress import StepProgress
from dax_core.runtime.sampling import Placement

from .node_text import show_under_node
from .status_text import Setup, device_names, progress_text, summary_text

PREVIEW_FORMAT = "JPEG"  # what ComfyUI's own samplers send


def gpu_names(device: torch.device, count: int = 1) -> str:
    """The names of ``count`` devices of ``device``'s kind starting at its index (CUDA), or the kind."""
    if device.type != "cuda":
        return device.type.upper()
    first = device.index or 0
    return device_names([torch.cuda.get_device_name(first + i) for i in range(count)])


class SamplerStatus:
    """What one sampler node's run shows (``dax_core.runtime.sampling.RunStatus``): ``show`` a line, ``start`` once
    the run is checked, then ``placed``, ``on_progress`` per step and ``finish`` with the result."""

    def __init__(self, node_id: str | None) -> None:
        self.node_id = node_id
        self.device = mm.get_torch_device()
        self.pbar: comfy.utils.ProgressBar | None = None
        self.previewer = None
        self.where = Setup(gpu_names(self.device))

    def start(self, steps: int, latent_channels: int) -> None:
        self.pbar = comfy.utils.ProgressBar(steps)
        latent_format = comfy.latent_formats.Wan22() if latent_channels == 48 else comfy.latent_formats.Wan21()
        self.previewer = latent_preview.get_previewer(self.device, latent_format)

    @property
    def previews(self) -> bool:
        """Whether ComfyUI's preview method asks for previews (then the engine sends a small latent each step)."""
        return self.previewer is not None

    def placed(self, where: Placement) -> None:
        self.where = Setup(gpu_names(where.device, where.count), where.layout, where.group, where.reused)
        self.show(self.where.describe())

    def on_progress(self, p: StepProgress) -> None:
        image = None
        if self.previewer is not None and p.preview is not None:
            image = self.previewer.decode_latent_to_preview_image(PREVIEW_FORMAT, p.preview.to(self.device))
        if self.pbar is not None:
            self.pbar.update_absolute(p.step, p.total, image)
        self.show(progress_text(p, self.where))

    def finish(self, result: SampleResult) -> None:
        self.show(summary_text(result, self.where))

    def show(self, text: str) -> None:
        show_under_node(self.node_id, text)
