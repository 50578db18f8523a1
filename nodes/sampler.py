"""The DAX samplers: DAX_MODEL + native conditioning + native latent -> native LATENT.

Multi-GPU Sampler (DAX) is the KSampler of DAX (with denoise for video-to-video); Sampler Advanced (DAX) is its
KSamplerAdvanced and SamplerCustom: add_noise, start/end steps, leftover noise and an optional SIGMAS input, so that
two samplers chain (Wan2.2's two experts) and a native sampler's output continues in DAX and back.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from dax_core.recipe import Recipe
from dax_core.runtime.distributed import SEQUENCE_PARALLEL_MODES
from dax_core.runtime.engine import SampleRequest
from dax_core.runtime.image_conditioning import model_image_input
from dax_core.runtime.liveness import Liveness
from dax_core.runtime.model_info import recipe_model
from dax_core.runtime.samplers import SAMPLERS
from dax_core.runtime.sampling import GroupOptions, Sampling
from dax_core.runtime.schedules import SCHEDULERS

from .comfy_host import ComfyHost
from .model_socket import dax_model_input
from .sampler_status import SamplerStatus

DEFAULT_SAMPLER = "wan_unipc"

log = logging.getLogger(__name__)

TOOLTIPS = {
    "dax_model": "The model to sample: Load Wan DAX, directly or through Quantize Linear, Set Attention Backend, "
    "Radial Attention, TeaCache / MagCache and Compile.",
    "positive": "What the video shows: one CLIPTextEncode output, encoded with the Wan text encoder (CLIPLoader, "
    "type wan). Image-to-video (I2V / FLF2V models): WanImageToVideo's or WanFirstLastFrameToVideo's positive "
    "output, which carries the start (and end) image and its CLIP-vision features.",
    "negative": "What the video avoids: one CLIPTextEncode output (not used when cfg is 1); image-to-video: the "
    "negative output of the same WanImageToVideo / WanFirstLastFrameToVideo.",
    "latent_image": "The video's size: EmptyHunyuanLatentVideo (width, height, length in frames, batch; "
    "Wan22ImageToVideoLatent for Wan2.2 TI2V 5B, with an optional start image), or a latent to continue (a VAE "
    "encode, another sampler's output). Its noise mask is applied as KSampler applies it.",
    "seed": "Seed of the starting noise: the same noise as the native KSampler's for the same seed.",
    "add_noise": "enable: start from noise drawn with noise_seed, as KSamplerAdvanced. disable: continue the input "
    "latent as it is (a first sampler's leftover noise).",
    "steps": "Denoising steps of the whole schedule: Wan2.1 and Wan2.2 TI2V 5B use 50, Wan2.2 A14B 40.",
    "cfg": "Classifier-free guidance: Wan2.1 uses 6 at 1.3B and 5 at 14B; Wan2.2 TI2V 5B 5, A14B 4 (high-noise "
    "expert) and 3 (low-noise). 1 runs the positive branch alone, half the work per step.",
    "low_noise_cfg": "A two-expert Wan2.2 model only: the guidance of the low-noise expert's steps (the official "
    "A14B settings: 3 for T2V, 3.5 for I2V, with cfg 4 and 3.5 for the high-noise expert). 0: the same as cfg.",
    "scheduler": "The sigma schedule, computed as ComfyUI's scheduler of that name with the flow shift.",
    "shift": "Flow shift (> 0): Wan2.1 uses 8 for T2V at 480p (5 at 720p); Wan2.2 T2V A14B 12, TI2V 5B 5. With a "
    "two-expert model it also moves the step where the experts switch.",
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
    "hang_timeout": "gpus > 1: seconds after which a worker that sends no heartbeat (stopped, frozen), or a step "
    "that takes longer than this and 5x the slowest step so far, fails the run naming the worker. Changing it "
    "keeps the running workers.",
    "first_step_timeout": "gpus > 1: seconds the first step of a run may take (it includes torch.compile's "
    "warm-up, minutes at 14B) before the run fails as hung. Changing it keeps the running workers.",
}
DEFAULT_LIVENESS = Liveness()

SAMPLING = Sampling(ComfyHost())
"""The engines the sampler nodes built (one GPU, or worker groups) and the runs on them."""


# Conditioning extras that other Wan nodes set, which the DAX sampler does not apply: refused by name.
_OTHER_WAN_EXTRAS = {
    "time_dim_concat": "Phantom's subject images (WanPhantomSubjectToVideo)",
    "reference_latents": "reference latents (a VACE or reference-image node)",
    "vace_frames": "VACE control frames (WanVaceToVideo)",
    "camera_conditions": "camera control (WanCameraImageToVideo)",
    "audio_embed": "speech-to-video audio (WanSoundImageToVideo)",
    "concat_mask_index": "a Fun-model mask layout",
}


def _conditioning(recipe: Recipe, positive: list, negative: list, latent: torch.Tensor) -> dict[str, torch.Tensor]:
    """SampleRequest's text and image fields from the native CONDITIONING of both branches: the text embedding, and
    what WanImageToVideo / WanFirstLastFrameToVideo add (``concat_latent_image``, ``concat_mask``,
    ``clip_vision_output``) made as ComfyUI's Wan2.1 model makes them (``dax_core.runtime.image_conditioning``).
    Whether the model takes them is ``dax_core.rules``' decision, before anything loads."""
    spec = recipe_model(recipe).spec
    fields: dict[str, torch.Tensor] = {}
    for which, conditioning in (("positive", positive), ("negative", negative)):
        emb, extras = _text_embedding(conditioning, which)
        fields[which] = emb
        image = extras.get("concat_latent_image")
        if image is not None:
            fields[f"{which}_image"] = model_image_input(spec, tuple(latent.shape), image, extras.get("concat_mask"))
        clip = extras.get("clip_vision_output")
        if clip is not None:
            fields[f"{which}_clip"] = clip.penultimate_hidden_states.detach().cpu()
    return fields


def _text_embedding(conditioning: list, which: str) -> tuple[torch.Tensor, dict]:
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
    other = [f"{key} ({what})" for key, what in _OTHER_WAN_EXTRAS.items() if key in extras]
    if other:
        raise ValueError(
            f"{which} conditioning carries {', '.join(other)}, which the DAX sampler does not apply: DAX runs Wan "
            "text-to-video, image-to-video (WanImageToVideo) and first-last-frame (WanFirstLastFrameToVideo) "
            "conditioning - use the native KSampler for this one"
        )
    return emb, extras


def _latent_samples(latent: dict) -> torch.Tensor:
    """The latent's samples, or a clear error for what the DAX sampler cannot honour (its noise mask, e.g.
    Wan22ImageToVideoLatent's, goes with the request: ``_noise_mask``)."""
    if "batch_index" in latent:
        raise ValueError(
            "latent_image carries a batch_index (from LatentFromBatch / RepeatLatentBatch), which picks per-item "
            "noise the DAX sampler does not reproduce: sample the whole batch, or use the native KSampler"
        )
    return latent["samples"]


def _noise_mask(latent: dict) -> torch.Tensor | None:
    """The latent's noise mask (Wan22ImageToVideoLatent's first frame, SetLatentNoiseMask), applied as KSampler does."""
    mask = latent.get("noise_mask")
    return None if mask is None else mask.detach().cpu().float()


EXPERT_INPUTS = {
    "low_noise_cfg": (
        "FLOAT",
        {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": TOOLTIPS["low_noise_cfg"]},
    ),
}


def _low_noise_cfg(widget: float) -> float | None:
    """The request's low_noise_cfg from the widget (0: the same as cfg)."""
    return None if widget == 0.0 else widget


PARALLEL_INPUTS = {
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
}


def _sampling_inputs(seed_name: str) -> dict:
    """The widgets both DAX samplers share, in their order (``seed_name``: KSampler's ``seed`` or ``noise_seed``)."""
    return {
        seed_name: (
            "INT",
            {
                "default": 0,
                "min": 0,
                "max": 0xFFFFFFFFFFFFFFFF,
                "control_after_generate": True,
                "tooltip": TOOLTIPS["seed"],
            },
        ),
        "steps": ("INT", {"default": 30, "min": 1, "max": 1000, "tooltip": TOOLTIPS["steps"]}),
        "cfg": (
            "FLOAT",
            {"default": 6.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": TOOLTIPS["cfg"]},
        ),
        "shift": ("FLOAT", {"default": 8.0, "min": 0.01, "max": 100.0, "step": 0.1, "tooltip": TOOLTIPS["shift"]}),
        "sampler_name": (list(SAMPLERS), {"default": DEFAULT_SAMPLER, "tooltip": TOOLTIPS["sampler_name"]}),
        "scheduler": (list(SCHEDULERS), {"default": "simple", "tooltip": TOOLTIPS["scheduler"]}),
    }


def _model_and_text_inputs() -> dict:
    """The sockets both DAX samplers start with."""
    return {
        "dax_model": dax_model_input(TOOLTIPS["dax_model"]),
        "positive": ("CONDITIONING", {"tooltip": TOOLTIPS["positive"]}),
        "negative": ("CONDITIONING", {"tooltip": TOOLTIPS["negative"]}),
        "latent_image": ("LATENT", {"tooltip": TOOLTIPS["latent_image"]}),
    }


HIDDEN = {"unique_id": "UNIQUE_ID"}  # the node the status text goes to
OUTPUT_TOOLTIP = (
    "The denoised Wan latent: decode it with VAEDecode and the model's VAE (Wan2.1 VAE; Wan2.2 VAE for TI2V 5B), or "
    "continue it in a sampler."
)


def _gpus_input() -> tuple:
    return ("INT", {"default": 1, "min": 1, "max": SAMPLING.max_processes(), "tooltip": TOOLTIPS["gpus"]})


def _run(
    recipe: Recipe, request: SampleRequest, latent_image: dict, gpus: int, options: GroupOptions, node_id: str | None
) -> dict:
    """Sample ``request`` here (gpus = 1) or in a worker group, showing its status under the node ``node_id``; the
    node's output with the run's summary."""
    status = SamplerStatus(node_id)
    result = SAMPLING.run(recipe, request, gpus, options, status)
    status.finish(result)
    out = dict(latent_image)
    out["samples"] = result.latent
    return {"ui": {"dax_summary": [*result.summary_lines(), status.where.describe()]}, "result": (out,)}


class DaxMultiGPUSampler:
    """Sample a Wan2.1 latent with the DAX engine, like the native KSampler (same noise for a seed)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **_model_and_text_inputs(),
                **_sampling_inputs("seed"),
                "denoise": (
                    "FLOAT",
                    {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": TOOLTIPS["denoise"]},
                ),
                "gpus": _gpus_input(),
            },
            "optional": {**PARALLEL_INPUTS, **EXPERT_INPUTS},  # new widgets last: saved workflows keep their values
            "hidden": dict(HIDDEN),
        }

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = (OUTPUT_TOOLTIP,)
    FUNCTION = "sample"
    CATEGORY = "DAX"
    DESCRIPTION = (
        "Wan sampling with the DAX engine (text- or image-to-video; with denoise below 1, video-to-video), as the "
        "native KSampler samples: one GPU in ComfyUI's process, or a worker group."
    )

    def sample(self, dax_model: Recipe, positive, negative, latent_image, seed, steps, cfg, shift, sampler_name,
               scheduler, denoise, gpus, unique_id=None, low_noise_cfg=0.0, **parallel):  # fmt: skip
        request = _request(
            dax_model,
            positive,
            negative,
            latent_image,
            seed=seed,
            steps=steps,
            cfg=cfg,
            shift=shift,
            sampler=sampler_name,
            scheduler=scheduler,
            denoise=denoise,
            low_noise_cfg=_low_noise_cfg(low_noise_cfg),
        )
        return _run(dax_model, request, latent_image, gpus, _parallel_options(parallel), unique_id)


class DaxSamplerAdvanced:
    """The DAX engine as the native KSamplerAdvanced (and SamplerCustom, with a SIGMAS input) samples."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **_model_and_text_inputs(),
                "add_noise": (["enable", "disable"], {"tooltip": TOOLTIPS["add_noise"]}),
                **_sampling_inputs("noise_seed"),
                "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000, "tooltip": TOOLTIPS["start_at_step"]}),
                "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000, "tooltip": TOOLTIPS["end_at_step"]}),
                "return_with_leftover_noise": (
                    ["disable", "enable"],
                    {"tooltip": TOOLTIPS["return_with_leftover_noise"]},
                ),
                "gpus": _gpus_input(),
            },
            "optional": {"sigmas": ("SIGMAS", {"tooltip": TOOLTIPS["sigmas"]}), **PARALLEL_INPUTS, **EXPERT_INPUTS},
            "hidden": dict(HIDDEN),
        }

    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = (OUTPUT_TOOLTIP,)
    FUNCTION = "sample"
    CATEGORY = "DAX"
    DESCRIPTION = (
        "The DAX engine with KSamplerAdvanced's start/end steps, add_noise and leftover noise (two samplers chain: "
        "Wan2.2's experts, or a native sampler's output continued), and an optional SIGMAS input as SamplerCustom."
    )

    def sample(self, dax_model: Recipe, positive, negative, latent_image, add_noise, noise_seed, steps, cfg, shift,
               sampler_name, scheduler, start_at_step, end_at_step, return_with_leftover_noise, gpus, sigmas=None,
               unique_id=None, low_noise_cfg=0.0, **parallel):  # fmt: skip
        request = _request(
            dax_model,
            positive,
            negative,
            latent_image,
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
            low_noise_cfg=_low_noise_cfg(low_noise_cfg),
        )
        return _run(dax_model, request, latent_image, gpus, _parallel_options(parallel), unique_id)


def _request(recipe: Recipe, positive: list, negative: list, latent_image: dict, **settings: Any) -> SampleRequest:
    """The request of a sampler node: the native conditioning and latent (with its noise mask) and ``settings``."""
    latent = _latent_samples(latent_image)
    return SampleRequest(
        **_conditioning(recipe, positive, negative, latent), latent=latent, noise_mask=_noise_mask(latent_image),
        **settings,
    )  # fmt: skip


def _parallel_options(given: dict) -> GroupOptions:
    """The optional multi-GPU widgets as a run takes them, defaults filled in."""
    options = {name: spec[1]["default"] for name, spec in PARALLEL_INPUTS.items()} | given
    hang = options["hang_timeout"]
    return GroupOptions(
        mode=options["sequence_parallel"],
        ulysses_degree=options["ulysses_degree"],
        cfg_parallel=options["cfg_parallel"],
        overlap=options["overlap"],
        liveness=dataclasses.replace(
            DEFAULT_LIVENESS, silence_s=hang, step_floor_s=hang, first_step_s=options["first_step_timeout"]
        ),
    )
