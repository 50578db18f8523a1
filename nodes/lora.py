"""Load LoRA (DAX): DAX_MODEL + a file from ComfyUI's loras folder + strength -> a DAX_MODEL that merges it.

The file is checked here, from its header, against the model it goes on; its weights are merged when the sampler
builds the model (or into the built model, when only LoRAs changed).
"""

from __future__ import annotations

import logging

import folder_paths

from dax_core.lora import lora_fingerprint, lora_ref, plan_lora
from dax_core.recipe import Recipe
from dax_core.rules import check_recipe
from dax_core.runtime.model_info import recipe_model

from .model_socket import dax_model_input, patched_model_tooltip

log = logging.getLogger(__name__)

TOOLTIPS = {
    "lora_name": "A LoRA for Wan2.1 text-to-video in models/loras, in any of the usual key formats (ComfyUI / "
    "lightx2v / kijai, diffusers / PEFT, kohya / musubi-tuner). Step-distillation LoRAs (lightx2v's "
    "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64 for T2V 14B; CausVid, rCM, Self-Forcing extractions) "
    "sample in 4 steps at cfg 1, shift 5, scheduler simple, sampler euler or lcm: lightx2v's own 4-step sampler is "
    "Euler on exactly these sigmas (1, 0.9375, 0.833, 0.625, 0). Leave TeaCache / MagCache out of such a workflow.",
    "strength": "How much of the LoRA to merge: 1 as trained, 0 leaves the model as it is, negative subtracts it "
    "(as ComfyUI's LoraLoader). A new strength merges into the loaded model again without a reload or a "
    "recompile.",
}


def _lora_path(lora_name: str) -> str:
    path = folder_paths.get_full_path("loras", lora_name)
    if path is None:
        raise FileNotFoundError(
            f"LoRA file {lora_name!r} not found in ComfyUI's loras folders {folder_paths.get_folder_paths('loras')}; "
            "put the .safetensors there and refresh"
        )
    return path


class DaxLoadLora:
    """Merge a LoRA into the Wan model of a DAX_MODEL; chain several for several LoRAs."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dax_model": dax_model_input(),
                "lora_name": (folder_paths.get_filename_list("loras"), {"tooltip": TOOLTIPS["lora_name"]}),
                "strength": (
                    "FLOAT",
                    {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01, "tooltip": TOOLTIPS["strength"]},
                ),
            }
        }

    RETURN_TYPES = ("DAX_MODEL",)
    RETURN_NAMES = ("dax_model",)
    OUTPUT_TOOLTIPS = (patched_model_tooltip("this LoRA merged into its weights"),)
    FUNCTION = "load"
    CATEGORY = "DAX"
    DESCRIPTION = (
        "Merge a LoRA (e.g. lightx2v's 4-step distillation LoRA) into the model for the DAX sampler: in float32, "
        "before Quantize Linear quantizes the weights. Keys that match no layer are reported in the sampler's summary."
    )

    @classmethod
    def IS_CHANGED(cls, lora_name: str, **_inputs) -> str:
        """The file's content fingerprint: a LoRA file written anew makes the node (and the recipe) new."""
        path = folder_paths.get_full_path("loras", lora_name)
        try:
            return lora_fingerprint(path) if path else ""
        except ValueError:
            return ""  # the node itself reports the unreadable file

    def load(self, dax_model: Recipe, lora_name: str, strength: float) -> tuple[Recipe]:
        path = _lora_path(lora_name)
        spec = recipe_model(dax_model).spec
        plan = plan_lora(path, spec)  # a LoRA that does not fit fails here
        if plan.unmatched:
            log.warning("Load LoRA (DAX): %s: %s", lora_name, plan.describe_unmatched())
        if strength == 0:
            return (dax_model,)  # as ComfyUI's LoraLoader: nothing to merge
        log.info("Load LoRA (DAX): %s at strength %g, %d parameters", lora_name, strength, len(plan.changes))
        merged = dax_model.with_loras((*dax_model.loras, lora_ref(path, strength)))
        check_recipe(merged, spec)  # what the sampler would refuse (a LoRA on a two-expert model), said here
        return (merged,)
