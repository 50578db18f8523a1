"""Load Wan DAX: weights file + dtypes -> a DAX_MODEL recipe. Headers are checked here; weights load at sampling."""

from __future__ import annotations

import logging

from dax_core.models.loading import inspect_weights
from dax_core.recipe import COMPUTE_DTYPES, WEIGHT_DTYPES, Recipe

from .model_files import list_models, resolve_model

log = logging.getLogger(__name__)

TOOLTIPS = {
    "model_name": "Wan2.1 weights in models/diffusion_models (or a diffusers folder in models/diffusers): "
    "text-to-video (1.3B, 14B), image-to-video (I2V 14B 480p / 720p) or first-last-frame (FLF2V 14B); the variant "
    "is read from the file.",
    "weight_dtype": "How linear weights are stored. default: fp8 files stay fp8, others take the compute dtype. "
    "fp8_e4m3fn halves memory (upcast per layer).",
    "compute_dtype": "Activation dtype. bf16 is what Wan was trained in.",
}


class DaxLoadWan:
    """Describe a Wan2.1 DiT (T2V, I2V, FLF2V) to load; the sampler builds it and keeps it while the recipe is
    unchanged."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (list_models(), {"tooltip": TOOLTIPS["model_name"]}),
                "weight_dtype": (list(WEIGHT_DTYPES), {"default": "default", "tooltip": TOOLTIPS["weight_dtype"]}),
                "compute_dtype": (list(COMPUTE_DTYPES), {"default": "bf16", "tooltip": TOOLTIPS["compute_dtype"]}),
            }
        }

    RETURN_TYPES = ("DAX_MODEL",)
    RETURN_NAMES = ("dax_model",)
    OUTPUT_TOOLTIPS = (
        "A recipe naming these weights and dtypes and the model they hold (the file's header is read now; the weights "
        "load when the Multi-GPU Sampler first runs): connect it to a DAX patch node or to the sampler.",
    )
    FUNCTION = "load"
    CATEGORY = "DAX"
    DESCRIPTION = (
        "Load a Wan2.1 diffusion model (text-to-video, image-to-video or first-last-frame) for the DAX sampler."
    )

    def load(self, model_name: str, weight_dtype: str, compute_dtype: str) -> tuple[Recipe]:
        path = resolve_model(model_name)
        info = inspect_weights(path)  # raises a clear WeightsError for VACE/VAE/text encoders/corrupt files
        log.info(
            "Load Wan DAX: %s (%s, %s naming, stored %s)", model_name, info.model.variant, info.naming,
            info.stored_dtype,
        )  # fmt: skip
        # the resolved model travels in the recipe: nothing downstream reads the headers again
        return (Recipe(weights=path, weight_dtype=weight_dtype, compute_dtype=compute_dtype, model=info.model),)
