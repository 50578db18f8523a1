"""Radial Attention (DAX): DAX_MODEL -> DAX_MODEL whose self-attention runs the Radial block-sparse mask."""

from __future__ import annotations

import logging

import comfy.model_management as mm

from dax_core.attention.block_sparse import kernel_names
from dax_core.attention.radial_config import RadialConfig
from dax_core.recipe import Recipe

log = logging.getLogger(__name__)

DEFAULTS = RadialConfig()

TOOLTIPS = {
    "dense_steps": "The first steps keep dense attention. Published for Wan2.1 14B: 12 of 50 steps; 1 for a 4-step "
    "distilled LoRA (LightX2V), 2 of 8 (FusionX). At or above the step count nothing runs sparse.",
    "dense_layers": "The first transformer blocks of every step keep dense attention (published: 1).",
    "decay_factor": "Width of the spatial window for frames two or more apart (published: 0.2); never below one "
    "128-token block. Higher is closer to dense attention and slower.",
    "kernel": "auto: SpargeAttn's block-sparse SageAttention2 where installed, else FlexAttention (ring attention's "
    "chunks use FlexAttention); on the CPU the exact masked reference. sparge needs thu-ml/SpargeAttn built on the "
    "GPU machine; flex needs PyTorch 2.5+; reference computes every logit (no speed-up).",
}


DECAY_TIP = TOOLTIPS["decay_factor"]


class DaxRadialAttention:
    """Radial attention (training-free sparse): each token attends to spatially nearby tokens, with a window that
    shrinks with temporal distance; the first steps and layers stay dense. The node checks the kernel runs here."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dax_model": ("DAX_MODEL",),
                "dense_steps": (
                    "INT",
                    {"default": DEFAULTS.dense_steps, "min": 0, "max": 1000, "tooltip": TOOLTIPS["dense_steps"]},
                ),
                "dense_layers": (
                    "INT",
                    {"default": DEFAULTS.dense_layers, "min": 0, "max": 100, "tooltip": TOOLTIPS["dense_layers"]},
                ),
                "decay_factor": (
                    "FLOAT",
                    {"default": DEFAULTS.decay_factor, "min": 0.01, "max": 10.0, "step": 0.05, "tooltip": DECAY_TIP},
                ),
                "kernel": (kernel_names(), {"default": DEFAULTS.kernel, "tooltip": TOOLTIPS["kernel"]}),
            }
        }

    RETURN_TYPES = ("DAX_MODEL",)
    RETURN_NAMES = ("dax_model",)
    FUNCTION = "apply"
    CATEGORY = "DAX"
    DESCRIPTION = "Radial attention: a static block-sparse mask for Wan's self-attention (arXiv 2506.19852)."

    def apply(self, dax_model: Recipe, dense_steps: int, dense_layers: int, decay_factor: float, kernel: str):
        config = RadialConfig(
            dense_steps=dense_steps, dense_layers=dense_layers, decay_factor=decay_factor, kernel=kernel
        )
        # Bind on the sampler's device: a kernel that is not installed (with its install hint) or cannot run on this
        # GPU or dtype fails here, not in the middle of sampling.
        summary = config.describe(mm.get_torch_device(), dax_model.torch_compute_dtype)
        log.info("Radial Attention: %s", summary.replace("\n", "; "))
        return {"ui": {"dax_summary": [summary]}, "result": (dax_model.with_acceleration(config),)}
