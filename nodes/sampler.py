"""The DAX samplers: DAX_MODEL + native conditioning + native latent -> native LATENT.

Multi-GPU Sampler (DAX) is the KSampler of DAX (with denoise for video-to-video); Sampler Advanced (DAX) is its
KSamplerAdvanced and SamplerCustom: add_noise, start/end steps, leftover noise and an optional SIGMAS input, so that
two samplers chain (Wan2.2's two experts) and a native sampler's output continues in DAX and back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

import comfy.model_management as mm
import comfy.utils
import torch

from dax_core.accelerations import STEP_CACHE_KINDS
from dax_core.models.loading import inspect_weights
from dax_core.recipe import Recipe
from dax_core.runtime.distributed import SEQUENCE_PARALLEL_MODES, check_recipe_layout, parallel_layout
from dax_core.runtime.engine import SampleRequest, SampleResult, WanEngine
from dax_core.runtime.engine_cache import EngineCache
from dax_core.runtime.group import GroupConfig, SampleCancelled, StartCancelled, WorkerGroup
from dax_core.runtime.samplers import SAMPLERS
from dax_core.runtime.schedules import SCHEDULERS

DEFAULT_SAMPLER = "wan_unipc"

log = logging.getLogger(__name__)

TOOLTIPS = {
    "shift": "Flow shift: Wan2.1 uses 8 for T2V at 480p (5 at 720p).",
    "sampler_name": "ComfyUI's samplers, step for step as ComfyUI runs them on Wan (uni_pc and uni_pc_bh2 are "
    "ComfyUI's UniPC); wan_unipc is Wan's own solver (flow UniPC, bh2), wan_unipc_bh1 its bh1 variant.",
    "denoise": "Below 1: video-to-video. The input latent is noised to the first sigma of the last steps of a "
    "schedule of steps / denoise steps, as ComfyUI's KSampler does.",
    "start_at_step": "The first step of the schedule to run (KSamplerAdvanced's rule: sigmas[start:end + 1]).",
    "end_at_step": "The step to stop at; at or past the last step, the schedule runs to its end.",
    "return_with_leftover_noise": "enable: stop at end_at_step's sigma with the noise left in the latent, for a "
    "second sampler (add_noise disable, start_at_step = this end_at_step) to continue.",
    "sigmas": "Optional SIGMAS (any native scheduler or sigma node): replaces steps, scheduler and shift; "
    "start/end steps then cut these sigmas.",
    "gpus": "1: sample in ComfyUI's process. More: a group of worker processes, one per GPU, that split the video "
    "tokens (sequence parallelism); it stays up between prompts. On a CPU-only ComfyUI: CPU workers (for testing).",
    "sequence_parallel": "How the workers split attention over the video tokens: ulysses (all-to-all over heads; "
    "the degree must divide the heads: 12 for 1.3B, 40 for 14B), ring (key/value blocks passed around), or hybrid.",
    "ulysses_degree": "hybrid only: the Ulysses degree; the ring degree is the rest.",
    "cfg_parallel": "Run the positive and negative branches on two halves of the GPUs (needs an even count).",
    "overlap": "Overlap the workers' all-to-alls with attention. Measured on 2 NVLink H200s: 1.9% faster at 1.3B "
    "480p, 2.4% slower at 14B 720p; likelier to pay on slower links.",
}
CPU_WORKERS_MAX = 8

ENGINES: EngineCache[WanEngine | WorkerGroup] = EngineCache(on_release=mm.soft_empty_cache)


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


def _latent_samples(latent: dict) -> torch.Tensor:
    """The latent's samples, or a clear error for what the DAX sampler cannot honour."""
    if "noise_mask" in latent:
        raise ValueError(
            "latent_image has a noise_mask (inpainting: SetLatentNoiseMask, VAEEncodeForInpaint), which the DAX "
            "sampler does not support: sample the whole latent, or use the native KSampler for masked sampling"
        )
    if "batch_index" in latent:
        raise ValueError(
            "latent_image carries a batch_index (from LatentFromBatch / RepeatLatentBatch), which picks per-item "
            "noise the DAX sampler does not reproduce: sample the whole batch, or use the native KSampler"
        )
    return latent["samples"]


def _has_step_cache(recipe: Recipe) -> bool:
    return any(a.kind in STEP_CACHE_KINDS for a in recipe.accelerations)


def _owner(recipe: Recipe, takes_in_place: Callable[[Recipe], bool]) -> Recipe:
    """The recipe whose lifetime keeps the engine: the last one upstream of every node whose change a built engine
    takes in place, which ComfyUI keeps cached while only those nodes' widgets change."""
    return next((r for r in recipe.lineage() if not takes_in_place(r)), recipe)


def _build_engine(recipe: Recipe) -> WanEngine:
    device = mm.get_torch_device()
    mm.free_memory(_bytes_needed(recipe), device)  # ComfyUI's own models make room for ours first
    return WanEngine.build(recipe, device)


def _bytes_needed(recipe: Recipe) -> int:
    info = inspect_weights(recipe.weights)
    per_param = {"fp8_e4m3fn": 1, "fp32": 4}.get(recipe.weight_dtype, 2)
    return int(info.spec.parameter_count() * per_param * 1.2)


def _max_processes() -> int:
    device = mm.get_torch_device()
    if device.type == "cuda":
        return max(1, torch.cuda.device_count())
    return CPU_WORKERS_MAX if device.type == "cpu" else 1


def _group_config(
    recipe: Recipe, gpus: int, mode: str, ulysses_degree: int, cfg_parallel: bool, overlap: bool
) -> GroupConfig:
    device = mm.get_torch_device()
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if gpus > visible:
            raise ValueError(
                f"gpus = {gpus} but ComfyUI sees {visible} GPU(s) (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): lower gpus or make more GPUs visible"
            )
    elif device.type != "cpu":
        raise ValueError(f"the worker group runs on CUDA GPUs (or CPUs, for testing), not {device.type}: use gpus = 1")
    layout = parallel_layout(gpus, mode, ulysses_degree, cfg_parallel, overlap)
    layout.validate_for(inspect_weights(recipe.weights).spec)  # a layout error before any process starts
    check_recipe_layout(recipe, layout)  # and a recipe the layout cannot run, before an earlier group is released
    return GroupConfig(nproc_per_node=gpus, device=device.type, parallel=layout)


def _free_devices(config: GroupConfig) -> None:
    """ComfyUI's own models (text encoder, VAE...) leave the GPUs the group uses."""
    if config.device != "cuda":
        return
    for index in range(config.nproc_per_node):
        mm.free_memory(1e30, torch.device("cuda", index))
    mm.soft_empty_cache()


def _sample_in_group(recipe: Recipe, request: SampleRequest, steps: int, config: GroupConfig, pbar) -> SampleResult:
    # a change of recipe, layout or GPU set (the first gpus of CUDA_VISIBLE_DEVICES) starts a new group
    variant = f"{config}|CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}"

    def start(r: Recipe) -> WorkerGroup:
        _free_devices(config)
        return WorkerGroup(r, config, should_cancel=mm.processing_interrupted)  # Cancel works while it starts

    # New LoRAs (files, strengths) are taken by the running group (WorkerGroup.use_recipe): it is keyed without them
    whole = dataclasses.replace(recipe)  # started with the LoRAs; a copy, so the group does not keep the caller's
    try:
        group = ENGINES.get(
            recipe,
            lambda _key: start(whole),
            variant=variant,
            valid=lambda g: g.alive,
            built_from=recipe.without_loras(),
            owner=_owner(recipe, lambda r: bool(r.loras)),
        )
        group.use_recipe(whole)
    except StartCancelled:
        mm.throw_exception_if_processing_interrupted()  # ComfyUI's own "interrupted" outcome
        raise
    _free_devices(config)  # ComfyUI may have loaded its models again since the last prompt
    gpus = config.world_size
    log.info("Multi-GPU Sampler: %d steps on worker group %s (%d ranks)", steps, group.run_id, gpus)
    try:
        return group.sample(
            request,
            on_step=lambda step, total: pbar.update_absolute(step, total),
            should_cancel=mm.processing_interrupted,
        )
    except SampleCancelled:
        mm.throw_exception_if_processing_interrupted()  # ComfyUI's own "interrupted" outcome
        raise


PARALLEL_INPUTS = {
    "sequence_parallel": (
        list(SEQUENCE_PARALLEL_MODES),
        {"default": "ulysses", "tooltip": TOOLTIPS["sequence_parallel"]},
    ),
    "ulysses_degree": ("INT", {"default": 2, "min": 1, "max": 64, "tooltip": TOOLTIPS["ulysses_degree"]}),
    "cfg_parallel": ("BOOLEAN", {"default": False, "tooltip": TOOLTIPS["cfg_parallel"]}),
    "overlap": ("BOOLEAN", {"default": True, "tooltip": TOOLTIPS["overlap"]}),
}


def _sampling_inputs(seed_name: str) -> dict:
    """The widgets both DAX samplers share, in their order (``seed_name``: KSampler's ``seed`` or ``noise_seed``)."""
    return {
        seed_name: ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
        "steps": ("INT", {"default": 30, "min": 1, "max": 1000}),
        "cfg": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
        "shift": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": TOOLTIPS["shift"]}),
        "sampler_name": (list(SAMPLERS), {"default": DEFAULT_SAMPLER, "tooltip": TOOLTIPS["sampler_name"]}),
        "scheduler": (list(SCHEDULERS), {"default": "simple"}),
    }


def _gpus_input() -> tuple:
    return ("INT", {"default": 1, "min": 1, "max": _max_processes(), "tooltip": TOOLTIPS["gpus"]})


def _run(recipe: Recipe, request: SampleRequest, latent_image: dict, gpus: int, parallel: dict) -> dict:
    """Sample ``request`` here (gpus = 1) or in a worker group; the node's output with the run's summary."""
    steps = len(request.run_sigmas()) - 1  # the steps this run takes (a start/end cut or denoise changes them)
    pbar = comfy.utils.ProgressBar(steps)
    if gpus == 1:
        result = _sample_here(recipe, request, pbar)
    else:
        config = _group_config(recipe, gpus, **parallel)
        result = _sample_in_group(recipe, request, steps, config, pbar)
    out = dict(latent_image)
    out["samples"] = result.latent
    return {"ui": {"dax_summary": result.summary_lines()}, "result": (out,)}


def _sample_here(recipe: Recipe, request: SampleRequest, pbar) -> SampleResult:
    # A changed TeaCache/MagCache setting or LoRA (file, strength) is taken by the built model, with no build from
    # scratch: the engine is keyed without step caches and LoRAs and kept alive by the last recipe upstream of those
    # nodes, which ComfyUI keeps cached while only their widgets change.
    built = recipe.without(STEP_CACHE_KINDS)
    engine = ENGINES.get(
        recipe,
        lambda _key: _build_engine(built),  # built with its LoRAs
        built_from=built.without_loras(),
        valid=lambda e: e.can_use_loras_of(recipe),
        owner=_owner(recipe, lambda r: _has_step_cache(r) or bool(r.loras)),
    )
    engine.use_loras_of(recipe)
    engine.use_step_caches_of(recipe)

    def on_step(i: int, total: int, _x: torch.Tensor) -> None:
        pbar.update_absolute(i + 1, total)
        mm.throw_exception_if_processing_interrupted()  # ComfyUI's Cancel stops between steps

    return engine.sample(request, on_step=on_step)


class DaxMultiGPUSampler:
    """Sample a Wan2.1 latent with the DAX engine, like the native KSampler (same noise for a seed)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dax_model": ("DAX_MODEL",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                **_sampling_inputs("seed"),
                "denoise": (
                    "FLOAT",
                    {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": TOOLTIPS["denoise"]},
                ),
                "gpus": _gpus_input(),
            },
            "optional": dict(PARALLEL_INPUTS),
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "DAX"
    DESCRIPTION = (
        "Text-to-video (and, with denoise below 1, video-to-video) sampling with the DAX engine, as the native "
        "KSampler samples: one GPU in ComfyUI's process, or a worker group."
    )

    def sample(self, dax_model: Recipe, positive, negative, latent_image, seed, steps, cfg, shift, sampler_name,
               scheduler, denoise, gpus, **parallel):  # fmt: skip
        request = SampleRequest(
            positive=_text_embedding(positive, "positive"),
            negative=_text_embedding(negative, "negative"),
            latent=_latent_samples(latent_image),
            seed=seed,
            steps=steps,
            cfg=cfg,
            shift=shift,
            sampler=sampler_name,
            scheduler=scheduler,
            denoise=denoise,
        )
        return _run(dax_model, request, latent_image, gpus, _parallel_options(parallel))


class DaxSamplerAdvanced:
    """The DAX engine as the native KSamplerAdvanced (and SamplerCustom, with a SIGMAS input) samples."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dax_model": ("DAX_MODEL",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "add_noise": (["enable", "disable"],),
                **_sampling_inputs("noise_seed"),
                "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": TOOLTIPS["start_at_step"]}),
                "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000, "tooltip": TOOLTIPS["end_at_step"]}),
                "return_with_leftover_noise": (
                    ["disable", "enable"],
                    {"tooltip": TOOLTIPS["return_with_leftover_noise"]},
                ),
                "gpus": _gpus_input(),
            },
            "optional": {"sigmas": ("SIGMAS", {"tooltip": TOOLTIPS["sigmas"]}), **PARALLEL_INPUTS},
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "DAX"
    DESCRIPTION = (
        "The DAX engine with KSamplerAdvanced's start/end steps, add_noise and leftover noise (two samplers chain: "
        "Wan2.2's experts, or a native sampler's output continued), and an optional SIGMAS input as SamplerCustom."
    )

    def sample(self, dax_model: Recipe, positive, negative, latent_image, add_noise, noise_seed, steps, cfg, shift,
               sampler_name, scheduler, start_at_step, end_at_step, return_with_leftover_noise, gpus, sigmas=None,
               **parallel):  # fmt: skip
        request = SampleRequest(
            positive=_text_embedding(positive, "positive"),
            negative=_text_embedding(negative, "negative"),
            latent=_latent_samples(latent_image),
            seed=noise_seed,
            steps=steps,
            cfg=cfg,
            shift=shift,
            sampler=sampler_name,
            scheduler=scheduler,
            start_at_step=start_at_step,
            end_at_step=end_at_step,
            add_noise=add_noise == "enable",
            return_with_leftover_noise=return_with_leftover_noise == "enable",
            sigmas=None if sigmas is None else sigmas.detach().cpu(),
        )
        return _run(dax_model, request, latent_image, gpus, _parallel_options(parallel))


def _parallel_options(given: dict) -> dict:
    """The optional layout widgets as _group_config takes them, defaults filled in."""
    options = {name: spec[1]["default"] for name, spec in PARALLEL_INPUTS.items()} | given
    return {
        "mode": options["sequence_parallel"],
        "ulysses_degree": options["ulysses_degree"],
        "cfg_parallel": options["cfg_parallel"],
        "overlap": options["overlap"],
    }
