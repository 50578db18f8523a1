"""Scheduler (DAX): the sigmas ComfyUI's BasicScheduler makes for a Wan model, without a native MODEL -> SIGMAS."""

from __future__ import annotations

import torch

from dax_core.runtime.schedules import SCHEDULERS, ksampler_sigmas

TOOLTIPS = {
    "shift": "Flow shift, as ModelSamplingSD3 sets it on a native Wan model (and the DAX samplers' shift).",
    "denoise": "Below 1: the last steps of a schedule of steps / denoise steps (BasicScheduler's rule).",
}


class DaxScheduler:
    """BasicScheduler for DAX: the SIGMAS a native Wan model with this shift would get, for SplitSigmas and the
    other native sigma nodes, and for Sampler Advanced (DAX)'s sigmas input."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "shift": (
                    "FLOAT",
                    {"default": 8.0, "min": 0.01, "max": 100.0, "step": 0.1, "tooltip": TOOLTIPS["shift"]},
                ),
                "scheduler": (list(SCHEDULERS), {"default": "simple"}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "denoise": (
                    "FLOAT",
                    {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01, "tooltip": TOOLTIPS["denoise"]},
                ),
            }
        }

    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"
    CATEGORY = "DAX"
    DESCRIPTION = (
        "The flow sigmas of a Wan model for a scheduler, steps, shift and denoise, as BasicScheduler makes them."
    )

    def get_sigmas(self, shift: float, scheduler: str, steps: int, denoise: float) -> tuple[torch.Tensor]:
        return (ksampler_sigmas(scheduler, steps, shift, denoise=denoise),)
