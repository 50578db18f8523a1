"""Load Wan DAX: weights file(s) + model choice + dtypes -> a DAX_MODEL recipe. Headers are checked here; weights
load at sampling."""

from __future__ import annotations

import logging

from dax_core.experts import AUTO, MODEL_CHOICES
from dax_core.models.loading import inspect_weights
from dax_core.recipe import COMPUTE_DTYPES, WEIGHT_DTYPES, Recipe
from dax_core.runtime.model_info import chosen_model, recipe_spec

from .model_files import list_models, resolve_model

log = logging.getLogger(__name__)

NONE = "none"
TOOLTIPS = {
    "model_name": "Wan weights in models/diffusion_models (or a diffusers folder in models/diffusers): Wan2.1 "
    "text-to-video (1.3B, 14B), image-to-video (I2V 14B 480p / 720p) or first-last-frame (FLF2V 14B), Wan2.2 TI2V 5B "
    "(the variant is read from the file), or a Wan2.2 A14B expert (the high-noise one, for a two-expert model).",
    "weight_dtype": "How linear weights are stored. default: fp8 files stay fp8, others take the compute dtype. "
    "fp8_e4m3fn halves memory (upcast per layer).",
    "compute_dtype": "Activation dtype. bf16 is what Wan was trained in.",
    "model": "Which model the file is, where its shapes cannot tell (a Wan2.2 A14B expert has Wan2.1 14B's shapes). "
    "auto: read from the file (Wan2.1 T2V, I2V, FLF2V, Wan2.2 TI2V 5B). wan2.2-t2v-a14b / wan2.2-i2v-a14b: "
    "model_name is the high-noise expert, low_noise_model_name the low-noise one, and the sampler switches at the "
    "official boundary (sigma 0.875 for T2V, 0.900 for I2V, whose experts take WanImageToVideo's image without CLIP "
    "vision). ...-high / ...-low: one expert alone, for two chained Sampler Advanced (DAX) nodes.",
    "low_noise_model_name": "The low-noise expert of a two-expert model (model wan2.2-t2v-a14b or wan2.2-i2v-a14b); "
    "none for any other model.",
}


class DaxLoadWan:
    """Describe a Wan DiT (T2V, I2V, FLF2V, TI2V, or the two experts of a Wan2.2 A14B model) to load; the sampler
    builds it and keeps it while the recipe is unchanged."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (list_models(), {"tooltip": TOOLTIPS["model_name"]}),
                "weight_dtype": (list(WEIGHT_DTYPES), {"default": "default", "tooltip": TOOLTIPS["weight_dtype"]}),
                "compute_dtype": (list(COMPUTE_DTYPES), {"default": "bf16", "tooltip": TOOLTIPS["compute_dtype"]}),
            },
            "optional": {
                "model": (list(MODEL_CHOICES), {"default": AUTO, "tooltip": TOOLTIPS["model"]}),
                "low_noise_model_name": (
                    [NONE, *list_models()],
                    {"default": NONE, "tooltip": TOOLTIPS["low_noise_model_name"]},
                ),
            },
        }

    RETURN_TYPES = ("DAX_MODEL",)
    RETURN_NAMES = ("dax_model",)
    OUTPUT_TOOLTIPS = (
        "A recipe naming these weights and dtypes and the model they hold (the files' headers are read now; the "
        "weights load when the Multi-GPU Sampler first runs): connect it to a DAX patch node or to the sampler.",
    )
    FUNCTION = "load"
    CATEGORY = "DAX"
    DESCRIPTION = (
        "Load a Wan diffusion model for the DAX sampler: Wan2.1 text-to-video, image-to-video or first-last-frame, "
        "Wan2.2 TI2V 5B, or Wan2.2 A14B's two experts (one DAX_MODEL, switched at the official boundary) or one of "
        "them."
    )

    def load(
        self,
        model_name: str,
        weight_dtype: str,
        compute_dtype: str,
        model: str = AUTO,
        low_noise_model_name: str = NONE,
    ) -> tuple[Recipe]:
        path = resolve_model(model_name)
        info = inspect_weights(path)  # raises a clear WeightsError for VACE/VAE/text encoders/corrupt files
        low = None if low_noise_model_name == NONE else resolve_model(low_noise_model_name)
        # the resolved model travels in the recipe: nothing downstream reads the headers again
        recipe = Recipe(
            weights=path, weight_dtype=weight_dtype, compute_dtype=compute_dtype, model=chosen_model(info.model, model),
            model_choice=model, low_noise_weights=low,
        )  # fmt: skip
        recipe_spec(recipe)  # raises unless the files are what the model choice says
        log.info(
            "Load Wan DAX: %s (%s, %s, %s naming, stored %s)%s",
            model_name,
            model,
            recipe.model.variant,
            info.naming,
            info.stored_dtype,
            "" if low is None else f" + low-noise expert {low_noise_model_name}",
        )
        return (recipe,)
