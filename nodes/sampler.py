"""Multi-GPU Sampler: DAX_MODEL + native conditioning + native latent -> native LATENT."""

from __future__ import annotations

import dataclasses
import logging
import os

import comfy.model_management as mm
import comfy.utils
import torch

from dax_core.models.loading import inspect_weights
from dax_core.models.spec import WanSpec
from dax_core.recipe import Recipe
from dax_core.rules import STEP_CACHE_KINDS, check_run
from dax_core.runtime.distributed import SEQUENCE_PARALLEL_MODES, parallel_layout
from dax_core.runtime.engine import SampleRequest, SampleResult, WanEngine
from dax_core.runtime.engine_cache import EngineCache
from dax_core.runtime.group import GroupConfig, SampleCancelled, StartCancelled, WorkerGroup
from dax_core.runtime.liveness import Liveness
from dax_core.runtime.samplers import SAMPLERS
from dax_core.runtime.schedules import SCHEDULERS

from .loaded_engines import LoadedEngine

log = logging.getLogger(__name__)

TOOLTIPS = {
    "shift": "Flow shift (> 0): Wan2.1 uses 8 for T2V at 480p (5 at 720p).",
    "gpus": "1: sample in ComfyUI's process. More: a group of worker processes, one per GPU, that split the video "
    "tokens (sequence parallelism); it stays up between prompts. On a CPU-only ComfyUI: CPU workers (for testing).",
    "sequence_parallel": "How the workers split attention over the video tokens: ulysses (all-to-all over heads; "
    "the degree must divide the heads: 12 for 1.3B, 40 for 14B), ring (key/value blocks passed around), or hybrid.",
    "ulysses_degree": "hybrid only: the Ulysses degree; the ring degree is the rest.",
    "cfg_parallel": "Run the positive and negative branches on two halves of the GPUs (needs an even count).",
    "overlap": "Overlap the workers' all-to-alls with attention. Measured on 2 NVLink H200s: 1.9% faster at 1.3B "
    "480p, 2.4% slower at 14B 720p; likelier to pay on slower links.",
    "hang_timeout": "gpus > 1: seconds after which a worker that sends no heartbeat (stopped, frozen), or a step "
    "that takes longer than this and 5x the slowest step so far, fails the run naming the worker. Changing it "
    "keeps the running workers.",
    "first_step_timeout": "gpus > 1: seconds the first step of a run may take (it includes torch.compile's "
    "warm-up, minutes at 14B) before the run fails as hung. Changing it keeps the running workers.",
}
CPU_WORKERS_MAX = 8
DEFAULT_LIVENESS = Liveness()

ENGINES: EngineCache[LoadedEngine] = EngineCache(on_release=mm.soft_empty_cache)


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


def _has_step_cache(recipe: Recipe) -> bool:
    return any(a.kind in STEP_CACHE_KINDS for a in recipe.accelerations)


def _bytes_needed(recipe: Recipe, spec: WanSpec) -> int:
    per_param = {"fp8_e4m3fn": 1, "fp32": 4}.get(recipe.weight_dtype, 2)
    return int(spec.parameter_count() * per_param * 1.2)


def _register(engine: WanEngine | WorkerGroup, size: int) -> LoadedEngine:
    """The engine, registered as loaded with ComfyUI's model management (which may then unload it)."""
    loaded = LoadedEngine(engine, mm.get_torch_device(), size)
    loaded.register()
    return loaded


def _max_processes() -> int:
    device = mm.get_torch_device()
    if device.type == "cuda":
        return max(1, torch.cuda.device_count())
    return CPU_WORKERS_MAX if device.type == "cpu" else 1


def _group_config(
    gpus: int, mode: str, ulysses_degree: int, cfg_parallel: bool, overlap: bool, liveness: Liveness
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
    return GroupConfig(nproc_per_node=gpus, device=device.type, parallel=layout, liveness=liveness)


def _prepare(
    recipe: Recipe,
    request: SampleRequest,
    gpus: int,
    mode: str = "ulysses",
    ulysses_degree: int = 2,
    cfg_parallel: bool = False,
    overlap: bool = True,
    liveness: Liveness = DEFAULT_LIVENESS,
) -> tuple[WanSpec, GroupConfig | None]:
    """Every check of the run, before any engine is touched: a warm group stays as it is and no new one starts
    for a request or a recipe the ranks would refuse. The model's spec, and the group's config (None: one GPU)."""
    spec = inspect_weights(recipe.weights).spec
    config = None if gpus == 1 else _group_config(gpus, mode, ulysses_degree, cfg_parallel, overlap, liveness)
    check_run(recipe, spec, request, None if config is None else config.parallel)
    return spec, config


def _free_devices(config: GroupConfig, keep: LoadedEngine | None = None) -> None:
    """ComfyUI's own models (text encoder, VAE...) leave the GPUs the group uses (the group itself stays)."""
    if config.device != "cuda":
        return
    keep_loaded = keep.keep_loaded() if keep is not None else []
    for index in range(config.nproc_per_node):
        mm.free_memory(1e30, torch.device("cuda", index), keep_loaded=keep_loaded)
    mm.soft_empty_cache()


def _sample_in_group(recipe: Recipe, spec: WanSpec, request: SampleRequest, config: GroupConfig, pbar) -> SampleResult:
    # a change of recipe, layout or GPU set (the first gpus of CUDA_VISIBLE_DEVICES) starts a new group; the
    # liveness limits only change how the owner watches it
    same_group = dataclasses.replace(config, liveness=DEFAULT_LIVENESS)
    variant = f"{same_group}|CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}"

    def start(r: Recipe) -> LoadedEngine:
        _free_devices(config)
        group = WorkerGroup(r, config, should_cancel=mm.processing_interrupted)  # Cancel works while it starts
        return _register(group, _bytes_needed(r, spec))

    try:
        loaded = ENGINES.get(recipe, start, variant=variant, valid=lambda e: e.engine is not None and e.engine.alive)
    except StartCancelled:
        mm.throw_exception_if_processing_interrupted()  # ComfyUI's own "interrupted" outcome
        raise
    group = loaded.engine
    assert isinstance(group, WorkerGroup)
    _free_devices(config, keep=loaded)  # ComfyUI may have loaded its models again since the last prompt
    log.info(
        "Multi-GPU Sampler: %d steps on worker group %s (%d ranks)", request.steps, group.run_id, config.world_size
    )
    try:
        return group.sample(
            request,
            on_step=lambda step, total: pbar.update_absolute(step, total),
            should_cancel=mm.processing_interrupted,
            liveness=config.liveness,
        )
    except SampleCancelled:
        mm.throw_exception_if_processing_interrupted()  # ComfyUI's own "interrupted" outcome
        raise
    finally:
        if not group.alive:  # failed, or taken down after a cancel: the cache drops it at the next prompt (a full
            loaded.close()  # garbage collection then, not now: a Cancel must end the prompt within 2 s)


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
                    {"default": 8.0, "min": 0.01, "max": 100.0, "step": 0.1, "tooltip": TOOLTIPS["shift"]},
                ),
                "sampler_name": (list(SAMPLERS), {"default": "uni_pc_bh2"}),
                "scheduler": (list(SCHEDULERS), {"default": "simple"}),
                "gpus": ("INT", {"default": 1, "min": 1, "max": _max_processes(), "tooltip": TOOLTIPS["gpus"]}),
            },
            "optional": {
                "sequence_parallel": (
                    list(SEQUENCE_PARALLEL_MODES),
                    {"default": "ulysses", "tooltip": TOOLTIPS["sequence_parallel"]},
                ),
                "ulysses_degree": ("INT", {"default": 2, "min": 1, "max": 64, "tooltip": TOOLTIPS["ulysses_degree"]}),
                "cfg_parallel": ("BOOLEAN", {"default": False, "tooltip": TOOLTIPS["cfg_parallel"]}),
                "overlap": ("BOOLEAN", {"default": True, "tooltip": TOOLTIPS["overlap"]}),
                "hang_timeout": (
                    "FLOAT",
                    {
                        "default": DEFAULT_LIVENESS.silence_s,
                        "min": 5.0,
                        "max": 3600.0,
                        "step": 1.0,
                        "tooltip": TOOLTIPS["hang_timeout"],
                    },
                ),
                "first_step_timeout": (
                    "FLOAT",
                    {
                        "default": DEFAULT_LIVENESS.first_step_s,
                        "min": 10.0,
                        "max": 86400.0,
                        "step": 10.0,
                        "tooltip": TOOLTIPS["first_step_timeout"],
                    },
                ),
            },
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "DAX"
    DESCRIPTION = "Text-to-video sampling with the DAX engine: one GPU in ComfyUI's process, or a worker group."

    def sample(self, dax_model: Recipe, positive, negative, latent_image, seed, steps, cfg, shift, sampler_name,
               scheduler, gpus, sequence_parallel="ulysses", ulysses_degree=2, cfg_parallel=False,
               overlap=True, hang_timeout=DEFAULT_LIVENESS.silence_s,
               first_step_timeout=DEFAULT_LIVENESS.first_step_s):  # fmt: skip
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
        liveness = dataclasses.replace(
            DEFAULT_LIVENESS, silence_s=hang_timeout, step_floor_s=hang_timeout, first_step_s=first_step_timeout
        )
        spec, config = _prepare(
            dax_model, request, gpus, sequence_parallel, ulysses_degree, cfg_parallel, overlap, liveness
        )
        pbar = comfy.utils.ProgressBar(steps)
        if config is None:
            result = self._sample_here(dax_model, spec, request, pbar)
        else:
            result = _sample_in_group(dax_model, spec, request, config, pbar)
        out = dict(latent_image)
        out["samples"] = result.latent
        return {"ui": {"dax_summary": result.summary_lines()}, "result": (out,)}

    @staticmethod
    def _sample_here(recipe: Recipe, spec: WanSpec, request: SampleRequest, pbar) -> SampleResult:
        # A changed TeaCache/MagCache setting is taken by the built model, with no reload of the weights: the
        # engine is keyed without step caches and kept alive by the last recipe upstream of the step cache
        # node, which ComfyUI keeps cached while only the step cache's widgets change.
        owner = next((r for r in recipe.lineage() if not _has_step_cache(r)), recipe)

        def build(r: Recipe) -> LoadedEngine:
            device, size = mm.get_torch_device(), _bytes_needed(r, spec)
            mm.free_memory(size, device)  # ComfyUI's own models make room for ours first
            return _register(WanEngine.build(r, device), size)

        loaded = ENGINES.get(
            recipe,
            build,
            built_from=recipe.without(STEP_CACHE_KINDS),
            owner=owner,
            valid=lambda e: e.engine is not None,  # None: ComfyUI unloaded it
        )
        engine = loaded.engine
        assert isinstance(engine, WanEngine)
        engine.use_step_caches_of(recipe)

        def on_step(i: int, total: int, _x: torch.Tensor) -> None:
            pbar.update_absolute(i + 1, total)
            mm.throw_exception_if_processing_interrupted()  # ComfyUI's Cancel stops between steps

        return engine.sample(request, on_step=on_step)
