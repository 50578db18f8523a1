"""Multi-GPU Sampler: DAX_MODEL + native conditioning + native latent -> native LATENT."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils
import torch

from dax_core.recipe import Recipe
from dax_core.runtime.engine import SampleRequest, WanEngine
from dax_core.runtime.engine_cache import EngineCache
from dax_core.runtime.samplers import SAMPLERS
from dax_core.runtime.schedules import SCHEDULERS

log = logging.getLogger(__name__)

TOOLTIPS = {
    "shift": "Flow shift: Wan2.1 uses 8 for T2V at 480p (5 at 720p).",
    "gpus": "GPUs to split the video tokens over (sequence parallelism).",
}

ENGINES: EngineCache[WanEngine] = EngineCache(on_release=mm.soft_empty_cache)


def _text_embedding(conditioning: list, which: str) -> torch.Tensor:
    if not conditioning:
        raise ValueError(f"{which} conditioning is empty: connect a CLIPTextEncode output")
    if len(conditioning) > 1:
        raise ValueError(
            f"{which} conditioning has {len(conditioning)} entries (ConditioningCombine?); the DAX sampler takes one "
            "text embedding per branch: use ConditioningConcat or a single CLIPTextEncode"
        )
    emb, extras = conditioning[0]
    unsupported = sorted(k for k in ("area", "mask", "control", "gligen") if k in extras)
    if unsupported:
        raise ValueError(f"{which} conditioning carries {unsupported}, which the DAX sampler does not support")
    return emb


def _build_engine(recipe: Recipe) -> WanEngine:
    device = mm.get_torch_device()
    mm.free_memory(_bytes_needed(recipe), device)  # ComfyUI's own models make room for ours first
    return WanEngine.build(recipe, device)


def _bytes_needed(recipe: Recipe) -> int:
    from dax_core.models.loading import inspect_weights

    info = inspect_weights(recipe.weights)
    per_param = {"fp8_e4m3fn": 1, "fp32": 4}.get(recipe.weight_dtype, 2)
    return int(info.spec.parameter_count() * per_param * 1.2)


class DaxMultiGPUSampler:
    """Sample a Wan2.1 text-to-video latent with the DAX engine (same noise for a seed as the native KSampler)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dax_model": ("DAX_MODEL",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 1000}),
                "cfg": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "shift": (
                    "FLOAT",
                    {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": TOOLTIPS["shift"]},
                ),
                "sampler_name": (list(SAMPLERS), {"default": "uni_pc_bh2"}),
                "scheduler": (list(SCHEDULERS), {"default": "simple"}),
                "gpus": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": TOOLTIPS["gpus"]}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "DAX"
    DESCRIPTION = "Text-to-video sampling with the DAX engine: one GPU in ComfyUI's process, or a worker group."

    def sample(self, dax_model: Recipe, positive, negative, latent_image, seed, steps, cfg, shift, sampler_name,
               scheduler, gpus):  # fmt: skip
        if gpus != 1:
            raise ValueError(
                f"gpus = {gpus}: the multi-GPU worker group is not available yet in this version of DAX; use gpus = 1"
            )
        request = SampleRequest(
            positive=_text_embedding(positive, "positive"),
            negative=_text_embedding(negative, "negative"),
            latent=latent_image["samples"],
            seed=seed,
            steps=steps,
            cfg=cfg,
            shift=shift,
            sampler=sampler_name,
            scheduler=scheduler,
        )
        engine = ENGINES.get(dax_model, _build_engine)
        pbar = comfy.utils.ProgressBar(steps)

        def on_step(i: int, total: int, _x: torch.Tensor) -> None:
            pbar.update_absolute(i + 1, total)
            mm.throw_exception_if_processing_interrupted()  # ComfyUI's Cancel stops between steps

        result = engine.sample(request, on_step=on_step)
        out = dict(latent_image)
        out["samples"] = result.latent
        return {"ui": {"dax_summary": result.summary_lines()}, "result": (out,)}
