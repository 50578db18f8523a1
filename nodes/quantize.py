"""Quantize Linear: DAX_MODEL -> DAX_MODEL whose linear layers run in FP8 or INT8 (weights quantized at build)."""

from __future__ import annotations

import logging

import torch

from dax_core.quant.config import DTYPES, QuantizeConfig, parse_keep_list
from dax_core.quant.qconfig import GRANULARITIES, PER_TOKEN_PER_CHANNEL, require_fp8_support
from dax_core.quant.wan import WAN_KEEP_DEFAULT
from dax_core.recipe import Recipe
from dax_core.runtime.model_info import recipe_model

from .model_socket import dax_model_input, patched_model_tooltip

log = logging.getLogger(__name__)

TOOLTIPS = {
    "dtype": "fp8 (e4m3): fastest on Ada/Hopper/Blackwell (compute capability 8.9+). int8: any CUDA GPU, but on "
    "Hopper slower than bf16 (1.3B 480p, eager: 0.71 s a forward against 0.44 s in bf16). Without Compile, FP8 "
    "pays on 14B-sized layers (their "
    "inputs are quantized inside the norm kernels); a 1.3B model's 1536-wide GEMMs are too short to gain much: add "
    "Compile there.",
    "granularity": "per-token-per-channel: one scale per token and per output channel (accurate, the default). "
    "per-tensor: one scale per activation and per weight (ComfyUI's scaled fp8 files).",
    "keep_high_precision": "Comma list of module-name prefixes kept in bf16 (Wan or diffusers names, or "
    "'re:<regex>'). Default: text and time embedders, patch embedding and the output head.",
}


def _sampling_device() -> torch.device:
    import comfy.model_management as mm

    return mm.get_torch_device()


class DaxQuantizeLinear:
    """Run the model's linear layers in FP8 or INT8: activations quantized at every call, weights once."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dax_model": dax_model_input(),
                "dtype": (list(DTYPES), {"default": "fp8", "tooltip": TOOLTIPS["dtype"]}),
                "granularity": (
                    list(GRANULARITIES),
                    {"default": PER_TOKEN_PER_CHANNEL, "tooltip": TOOLTIPS["granularity"]},
                ),
                "keep_high_precision": (
                    "STRING",
                    {"default": ", ".join(WAN_KEEP_DEFAULT), "tooltip": TOOLTIPS["keep_high_precision"]},
                ),
            }
        }

    RETURN_TYPES = ("DAX_MODEL",)
    RETURN_NAMES = ("dax_model",)
    OUTPUT_TOOLTIPS = (patched_model_tooltip("its linear layers in 8 bits"),)
    FUNCTION = "patch"
    CATEGORY = "DAX"
    DESCRIPTION = (
        "FP8 or INT8 linear layers for the DAX sampler (a new DAX_MODEL; the input is unchanged). On a 1.3B model "
        "FP8 gains little without Compile."
    )

    def patch(self, dax_model: Recipe, dtype: str, granularity: str, keep_high_precision: str) -> tuple[Recipe]:
        config = QuantizeConfig(dtype=dtype, granularity=granularity, keep=parse_keep_list(keep_high_precision))
        if dtype == "fp8":
            require_fp8_support(_sampling_device())
        config.check(recipe_model(dax_model).spec)
        log.info("Quantize Linear: %s %s, kept in high precision: %s", dtype, granularity, ", ".join(config.keep))
        return (dax_model.with_acceleration(config),)
