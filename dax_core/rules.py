"""Every rule a sampling request or a recipe must pass before it runs, in one module.

A worker group's owner checks here first, before any process starts or any weight is loaded, against the model's
spec read from the weights file's header; the ranks, the one-process engine and the levers run the same functions
on the same objects, so a refusal says the same words wherever it happens, and a bad request never costs a reload.

The facts come from the objects themselves (a model's spec, a lever's config, the parallel layout); the decisions
are made here. This module imports no lever: the levers import it (for the words of their own refusals).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from .experts import MODEL_CHOICES
from .recipe import Recipe, RecipeError

if TYPE_CHECKING:
    from .models.spec import WanSpec
    from .parallel.config import ParallelConfig

STEP_CACHE_KINDS = ("teacache", "magcache")
"""Accelerations that only set ``model.step_cache``: a model takes at most one, and it can change on a built model
without rebuilding it."""
_STEP_CACHE_NAMES = {"teacache": "TeaCache", "magcache": "MagCache"}


# -- the words of a refusal, shared with the levers that refuse the same on a built model --------------------------


def step_cache_refused(cache: str = "a step cache (TeaCache/MagCache)") -> str:
    """Why ``cache`` cannot run with CFG-parallel, and what to change."""
    return (
        f"{cache} cannot run with CFG-parallel, where each rank holds one branch: turn cfg_parallel off "
        "(Ulysses/ring split the tokens instead) or drop the step cache"
    )


def second_step_cache_refused(existing: str, adding: str) -> str:
    """Why a model that has the ``existing`` step cache cannot take ``adding`` too."""
    return (
        f"this model already has a {existing} step cache; a model takes one: remove one of the {existing} and "
        f"{adding} nodes"
    )


# -- requests --------------------------------------------------------------------------------------------------------


def check_sampling(req: Any, samplers: Collection[str], schedulers: Collection[str]) -> None:
    """Raise ValueError, saying what to change, unless the request's own values can be sampled (whatever the model).

    ``req`` is a ``dax_core.runtime.engine.SampleRequest``, which calls this when it is made: on the owner when a
    node builds it, on every rank when it arrives. The request then checks its sigmas, the schedules' own rules
    (``dax_core.runtime.schedules``: a sigmas input's values, the step range), as it is made too.
    """
    if req.latent.ndim != 5:
        raise ValueError(
            f"expected a video latent [B, channels, frames, height, width], got shape {tuple(req.latent.shape)}: "
            "use EmptyHunyuanLatentVideo (or a Wan VAE encode; Wan22ImageToVideoLatent for Wan2.2 TI2V) for the latent"
        )
    for name in ("positive", "negative"):
        t = getattr(req, name)
        if t is not None and t.ndim != 3:
            raise ValueError(f"{name} text embedding must be [B, tokens, width], got {tuple(t.shape)}")
        if t is not None and t.shape[0] not in (1, req.latent.shape[0]):
            raise ValueError(f"{name} batch {t.shape[0]} does not match the latent batch {req.latent.shape[0]}")
    if isinstance(req.steps, bool) or not isinstance(req.steps, int) or req.steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {req.steps!r}")
    if not _finite(req.cfg) or req.cfg < 0:
        raise ValueError(f"cfg must be a finite number >= 0, got {req.cfg!r}")
    low = getattr(req, "low_noise_cfg", None)
    if low is not None and (not _finite(low) or low < 0):
        raise ValueError(f"low_noise_cfg must be a finite number >= 0, got {low!r}")
    if req.uses_cfg and req.negative is None:
        raise ValueError("cfg != 1 needs a negative prompt embedding")
    if not _finite(req.shift) or req.shift <= 0:
        raise ValueError(
            f"shift must be a finite number > 0, got {req.shift!r}: Wan2.1 uses 8 for T2V at 480p, 5 at 720p "
            "(the flow schedule divides by it)"
        )
    if req.sampler not in samplers:
        raise ValueError(f"unknown sampler {req.sampler!r}; choose one of {', '.join(samplers)}")
    if req.scheduler not in schedulers:
        raise ValueError(f"unknown scheduler {req.scheduler!r}; choose one of {', '.join(schedulers)}")
    if isinstance(req.seed, bool) or not isinstance(req.seed, int) or not 0 <= req.seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {req.seed!r}")
    if not _finite(req.denoise) or not 0 < req.denoise <= 1:
        raise ValueError(
            f"denoise must be in (0, 1], got {req.denoise!r}: 1 samples from pure noise, lower values keep more "
            "of the input latent (video-to-video)"
        )
    for name in ("add_noise", "return_with_leftover_noise"):
        if not isinstance(getattr(req, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(req, name)!r}")
    for name in ("start_at_step", "end_at_step"):
        value = getattr(req, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{name} must be an integer step index, got {value!r}")
    _check_image_shapes(req)
    if req.sigmas is not None and req.denoise != 1.0:
        raise ValueError(
            "denoise applies to the scheduler's sigmas; with a sigmas input, cut the sigmas instead "
            "(SplitSigmasDenoise) and leave denoise at 1"
        )


def check_request(req: Any, spec: WanSpec, parallel: ParallelConfig | None = None) -> None:
    """Raise ValueError, saying what to change, if ``req`` cannot run on a model of ``spec`` split as ``parallel``.

    The engine checks every request before its first step, and a worker group's owner before the request reaches
    any rank (or before a group is started for it): inside the ranks the same error would end the whole group.
    """
    spec.check_latent(req.latent.shape, spec.latent_channels)
    spec.check_text(req.positive.shape, "the positive text embedding")
    if req.uses_cfg and req.negative is not None:
        spec.check_text(req.negative.shape, "the negative text embedding")
    check_image_conditioning(req, spec)
    if parallel is None or not parallel.cfg_parallel:
        return
    # CFG-parallel gives each half of the GPUs half of every forward's batch rows: the conditional or the
    # unconditional ones when both branches are batched, else half of the latent's own rows
    batch = req.latent.shape[0]
    rows = 2 * batch if req.batches_branches(spec.takes_clip) else batch
    if rows % 2 == 0:
        return
    if not req.uses_cfg:
        raise ValueError(
            "cfg_parallel runs the positive and the negative branch on two halves of the GPUs, but cfg is 1, which "
            "runs the positive branch alone: set cfg above 1 or turn cfg_parallel off"
        )
    if req.negative is not None and req.negative.shape[1] == req.positive.shape[1]:  # the image features differ
        raise ValueError(
            f"cfg_parallel runs both guidance branches in one forward, which needs CLIP-vision features of the same "
            f"length, but the positive branch has {req.positive_clip.shape[1]} and the negative one "
            f"{req.negative_clip.shape[1]}: give both branches the same CLIPVisionEncode output (as WanImageToVideo "
            "does), or turn cfg_parallel off"
        )
    raise ValueError(
        f"cfg_parallel runs both guidance branches in one forward, which needs text embeddings of the same length, "
        f"but the positive one has {req.positive.shape[1]} tokens and the negative one {req.negative.shape[1]}: "
        "ComfyUI's Wan text encoder pads every prompt to 512 tokens, so shorten the longer prompt to 512 tokens, "
        "or turn cfg_parallel off"
    )


def check_image_conditioning(req: Any, spec: WanSpec) -> None:
    """Raise ValueError, saying what to change, unless the request's image conditioning is what a model of ``spec``
    takes: an image model (I2V, FLF2V) needs every branch's image latent, and its CLIP-vision features where it takes
    them (Wan2.1 I2V, FLF2V); a text-to-video model takes none. CLIP-vision features given to an image model without
    CLIP (Wan2.2 I2V A14B) pass: the model does not use them, as in ComfyUI, and the run's notes say so
    (``clip_ignored_note``)."""
    if not spec.takes_image_latent:
        if req.has_image:
            raise ValueError(
                f"the conditioning carries an image (concat_latent_image / clip_vision_output, from WanImageToVideo or "
                f"WanFirstLastFrameToVideo), but this is a {spec.model_type} model ({spec.name}), which takes none: "
                "load a Wan2.1 image-to-video (I2V), first-last-frame (FLF2V) or Wan2.2 I2V A14B model in Load Wan "
                "DAX, or give the sampler the text conditioning alone"
            )
        return
    node = "WanFirstLastFrameToVideo" if spec.model_type == "flf2v" else "WanImageToVideo"
    vae = "the Wan2.1 VAE" + ("" if spec.takes_clip else ", no CLIP vision needed")
    batch = req.latent.shape[0]
    for branch in ("positive", "negative") if req.uses_cfg else ("positive",):
        image, clip = getattr(req, f"{branch}_image"), getattr(req, f"{branch}_clip")
        if image is None:
            raise ValueError(
                f"this {spec.model_type} model ({spec.name}) needs the start image, but the {branch} conditioning "
                f"carries none: pass the positive and negative conditioning through {node} (with its start image "
                f"and {vae}) and sample its latent"
            )
        extra = spec.in_dim - spec.latent_channels
        if image.shape[1] != extra:
            raise ValueError(
                f"the {branch} image conditioning has {image.shape[1]} channels, this model takes {extra} "
                f"(4 mask + {extra - 4} image-latent channels): make it with {node} and {vae}"
            )
        if not spec.takes_clip:
            continue
        try:
            spec.check_image_features(None if clip is None else clip.shape, batch)
        except ValueError as e:
            raise ValueError(f"the {branch} conditioning: {e}") from e


def clip_ignored_note(req: Any, spec: WanSpec) -> str | None:
    """What a run's summary says when CLIP-vision features reach a model that takes none (Wan2.2 I2V A14B): ComfyUI's
    WanModel without an image embedding does not use them, and neither does DAX; None otherwise."""
    if spec.takes_clip or (req.positive_clip is None and req.negative_clip is None):
        return None
    return (
        f"clip_vision_output ignored: this model ({spec.name}) has no image cross-attention and takes the start image "
        "through the latent alone, as in ComfyUI; the CLIPVisionEncode node can be removed"
    )


def _check_image_shapes(req: Any) -> None:
    """The image conditioning's own shapes against the latent (whatever the model)."""
    latent = tuple(req.latent.shape)
    for branch in ("positive", "negative"):
        image, clip = getattr(req, f"{branch}_image"), getattr(req, f"{branch}_clip")
        if image is not None and (
            image.ndim != 5 or image.shape[0] not in (1, latent[0]) or tuple(image.shape[2:]) != latent[2:]
        ):
            raise ValueError(
                f"the {branch} image conditioning is {tuple(image.shape)}, but the latent is {latent}: it must be "
                f"[1 or {latent[0]}, channels, {', '.join(map(str, latent[2:]))}] - sample the latent that "
                "WanImageToVideo / WanFirstLastFrameToVideo made with this conditioning"
            )
        if clip is not None and clip.ndim != 3:
            raise ValueError(f"the {branch} CLIP-vision features must be [B, tokens, width], got {tuple(clip.shape)}")


# -- recipes and layouts -----------------------------------------------------------------------------------------


def check_recipe(recipe: Recipe, spec: WanSpec, parallel: ParallelConfig | None = None) -> None:
    """Raise ValueError (a ``RecipeError`` or the lever's own error), saying what to change, if ``recipe`` cannot be
    built on a model of ``spec`` and split as ``parallel`` (None or 1 process: not split).

    Every refusal here is one that the build itself would make, minutes later at 14B, after every rank loaded the
    weights: the owner calls this first, and ``build_engine`` calls it on every rank before loading.
    """
    caches = [a for a in recipe.accelerations if a.kind in STEP_CACHE_KINDS]
    if len(caches) > 1:
        first, second = (_STEP_CACHE_NAMES[a.kind] for a in caches[:2])
        raise RecipeError(second_step_cache_refused(first, second))
    _check_wan22(recipe, spec, caches)
    teacache = recipe.acceleration("teacache")
    if teacache is not None:
        teacache.resolve_coefficients(spec.name)
    magcache = recipe.acceleration("magcache")
    if magcache is not None:
        magcache.resolve_model(spec.name)
    quantize = recipe.acceleration("quantize")
    if quantize is not None:
        quantize.check(spec)
    if parallel is None or parallel.world_size == 1:
        return
    parallel.validate_for(spec)
    if quantize is not None:
        quantize.check_world_size(parallel.world_size)
    compile_config = recipe.acceleration("compile")
    if compile_config is not None:  # CUDA graphs cannot hold the collectives
        compile_config.check_world_size(parallel.world_size)
    if parallel.cfg_parallel and caches:
        raise ValueError(step_cache_refused())
    radial = recipe.acceleration("radial")
    if radial is not None:  # ring attention merges chunks by their log-sum-exp, which the kernel must return
        radial.check_layout(parallel.ring)


def _wan22_by_shapes(spec: WanSpec) -> str | None:
    """The Wan2.2 model a spec's shapes alone tell (no Wan2.1 model has them), or None."""
    if spec.model_type == "ti2v":
        return "Wan2.2 TI2V 5B"
    if spec.takes_image_latent and not spec.takes_clip:
        return "Wan2.2 I2V A14B"
    return None


def _check_wan22(recipe: Recipe, spec: WanSpec, caches: list[Any]) -> None:
    """Wan2.2's own rules: no published step-cache calibration (refused, except TeaCache with the user's own
    coefficients), and no LoRA on a two-expert model (each expert takes its own: chain two samplers)."""
    choice = MODEL_CHOICES[recipe.model_choice]
    model = choice.description if choice.is_wan22 else _wan22_by_shapes(spec)
    if model is None:
        return
    for cache in caches:
        if cache.kind == "teacache" and cache.coefficients:
            continue  # the user's own calibration for this model
        raise RecipeError(
            f"{_STEP_CACHE_NAMES[cache.kind]} has no published calibration for {model} (its TeaCache and MagCache "
            "numbers are measured on Wan2.1 and a Wan2.2 expert would get a Wan2.1 model's): remove the "
            f"{_STEP_CACHE_NAMES[cache.kind]} node, or give TeaCache coefficients calibrated on this model"
        )
    if recipe.loras and choice.is_pair:
        raise RecipeError(
            f"LoRAs on a two-expert model ({model}): each expert takes its own LoRA files, so load each expert alone "
            "(model choice ...-high / ...-low), apply its LoRA, and chain two Sampler Advanced (DAX) nodes"
        )


def check_run(recipe: Recipe, spec: WanSpec, req: Any, parallel: ParallelConfig | None = None) -> None:
    """Everything a run of ``req`` with ``recipe`` split as ``parallel`` must pass: the owner's one call, made
    before it touches a warm group or starts a new one."""
    check_recipe(recipe, spec, parallel)
    check_request(req, spec, parallel)
    check_low_noise_cfg(recipe, req)


def check_low_noise_cfg(recipe: Recipe, req: Any) -> None:
    """A guidance of its own for the low-noise expert needs a model of two experts."""
    if getattr(req, "low_noise_cfg", None) is not None and not recipe.is_expert_pair:
        raise ValueError(
            "low_noise_cfg guides the low-noise expert of a two-expert Wan2.2 model, but this DAX_MODEL is one model: "
            "set low_noise_cfg to 0 (the same as cfg), or load both experts in Load Wan DAX"
        )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
