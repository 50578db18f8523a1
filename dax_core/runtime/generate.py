"""``python -m dax_core generate``: a video latent from text embeddings (and, for an image model, the start image's
tensors), in one process or under torchrun.

Wan2.1 T2V, I2V and FLF2V, Wan2.2 TI2V 5B (a 48-channel latent) and Wan2.2 A14B, T2V and I2V (``--model
wan2.2-t2v-a14b --weights HIGH_NOISE --low-noise-weights LOW_NOISE``, switched at the official boundary).

One process::

    python -m dax_core generate --weights wan2.1_t2v_1.3B_bf16.safetensors \\
        --text-embeddings prompt.safetensors --out latent.safetensors [--width 832 --height 480 --frames 81 ...] \\
        [--lora distill_lora.safetensors:1.0 ...]

Several GPUs of one machine (each process takes the GPU of its local rank and the video tokens are split over
them, like upstream DAX's ``--sequence_parallel``)::

    torchrun --nproc_per_node 8 -m dax_core generate ... [--ulysses 4 --ring 2] [--cfg-parallel]

Several machines: the same command on every machine, with one rendezvous endpoint (a port on the first machine
that the others can reach) and the weights and embeddings at the same path on each::

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m dax_core generate ...

The embeddings file holds ``positive`` (and ``negative``, unless ``--cfg 1``): [tokens, width] or
[batch, tokens, width] tensors, e.g. umt5-xxl outputs. An image model's start (and end) image comes as tensors too
(``--image FILE``, safetensors), named as ComfyUI's nodes name them (``IMAGE_TENSORS``): ``concat_latent_image`` and
``concat_mask`` as WanImageToVideo / WanFirstLastFrameToVideo make them, with ``clip_vision`` (CLIPVisionEncode's
penultimate hidden states) for the models that take CLIP (Wan2.1 I2V, FLF2V); for Wan2.2 TI2V 5B, ``start_latent``,
kept as the first latent frames as Wan22ImageToVideoLatent keeps it. Both guidance branches take the same image.
Rank 0 writes ``latent`` to ``--out``: ComfyUI's un-normalised [batch, channels, (frames - 1) // 4 + 1, height / s,
width / s] video latent in float32 (16 channels and s = 8 for the Wan2.1 VAE; 48 and 16 for Wan2.2 TI2V's).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..experts import AUTO, MODEL_CHOICES
from ..lora import lora_ref
from ..lora.merge import recipe_deltas
from ..models.spec import WanSpec
from ..recipe import COMPUTE_DTYPES, WEIGHT_DTYPES, LoraRef, Recipe
from ..rules import check_run
from .distributed import ParallelConfig, RankEnv, build_engine, init_process_group
from .engine import SampleRequest
from .image_conditioning import model_image_input
from .model_info import recipe_spec
from .noise_mask import start_frames_kept
from .samplers import SAMPLERS
from .schedules import SCHEDULERS

log = logging.getLogger(__name__)

IMAGE_TENSORS = {
    "concat_latent_image": "the Wan2.1 VAE latent of the start (and end) frames, grey elsewhere, as WanImageToVideo "
    "and WanFirstLastFrameToVideo make it: [1, 16, latent frames, height / 8, width / 8]",
    "concat_mask": "their concat_mask: [1, 1 or 4, latent frames, height / 8, width / 8], 0 on the given frames",
    "clip_vision": "CLIPVisionEncode's penultimate hidden states: [1, 257, 1280], FLF2V [1, 514, 1280]",
    "start_latent": "Wan2.2 TI2V 5B: the Wan2.2 VAE latent of the start image, [1, 48, frames, height / 16, "
    "width / 16]",
}
"""The tensors an ``--image`` file may hold."""
IMAGE_FILE = "; ".join(f"{name}: {what}" for name, what in IMAGE_TENSORS.items())
"""What an ``--image`` file holds, in words (the option's help and its errors)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dax_core generate",
        description="Sample a Wan video latent; under torchrun the processes split the video tokens.",
    )
    p.add_argument("--weights", required=True, help="Wan DiT: a .safetensors file or a diffusers folder (a Wan2.2 "
                   "A14B model's high-noise expert)")  # fmt: skip
    p.add_argument("--model", choices=list(MODEL_CHOICES), default=AUTO, help="which model the weights are, where "
                   "their shapes cannot tell (auto: from the file)")  # fmt: skip
    p.add_argument("--low-noise-weights", help="the low-noise expert of a two-expert model (--model wan2.2-*-a14b)")
    p.add_argument("--text-embeddings", required=True, type=Path, help="safetensors with positive (and negative)")
    p.add_argument("--image", type=Path, help=f"an image model's start image as safetensors: {IMAGE_FILE}")
    p.add_argument("--out", required=True, type=Path, help="safetensors file to write the latent to")
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--frames", type=int, default=81, help="video frames (the latent has (frames - 1) // 4 + 1)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=6.0)
    p.add_argument("--low-noise-cfg", type=float, help="a two-expert model's guidance for its low-noise expert "
                   "(default: --cfg)")  # fmt: skip
    p.add_argument("--shift", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=SAMPLERS, default="wan_unipc")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="simple")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="a LoRA merged into the weights (strength 1 unless given); repeat for several")  # fmt: skip
    p.add_argument("--weight-dtype", choices=WEIGHT_DTYPES, default="default")
    p.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default="bf16")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ulysses", type=int, help="Ulysses degree (default: all the processes of a branch)")
    p.add_argument("--ring", type=int, help="ring degree (default: what Ulysses leaves)")
    p.add_argument("--cfg-parallel", action="store_true", help="the two guidance branches on two halves")
    p.add_argument("--no-overlap", action="store_true", help="do not overlap communication with computation")
    p.add_argument("--collective-timeout", type=float, default=600.0, help="seconds before a stuck collective fails")
    return p


def layout_from_args(args: argparse.Namespace, world_size: int) -> ParallelConfig:
    """The parallel layout the flags ask for; unset degrees take what the others leave."""
    branches = 2 if args.cfg_parallel else 1
    if world_size % branches:
        raise ValueError(f"--cfg-parallel needs an even number of processes, got {world_size}")
    seq = world_size // branches
    ulysses, ring = args.ulysses, args.ring
    if ulysses is None and ring is None:
        ulysses, ring = seq, 1
    elif ulysses is None:
        if ring < 1 or seq % ring:
            raise ValueError(f"--ring {ring} must divide the {seq} processes per branch")
        ulysses = seq // ring
    elif ring is None:
        if ulysses < 1 or seq % ulysses:
            raise ValueError(f"--ulysses {ulysses} must divide the {seq} processes per branch")
        ring = seq // ulysses
    return ParallelConfig(
        world_size=world_size, ulysses=ulysses, ring=ring, cfg_parallel=args.cfg_parallel, overlap=not args.no_overlap
    )


def lora_from_arg(arg: str) -> LoraRef:
    """``FILE`` or ``FILE:STRENGTH`` as a recipe entry (the file's fingerprint read now)."""
    head, sep, tail = arg.rpartition(":")
    try:
        strength = float(tail) if sep and head else None
    except ValueError:
        strength = None  # a colon in the file's name
    return lora_ref(arg, 1.0) if strength is None else lora_ref(head, strength)


def _embeddings(path: Path, need_negative: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"cannot read the text embeddings {path}: {e}") from None
    if "positive" not in tensors:
        raise ValueError(f"{path} has no 'positive' tensor (found {sorted(tensors)}): save the prompt's embedding so")
    if need_negative and "negative" not in tensors:
        raise ValueError(f"{path} has no 'negative' tensor, which --cfg other than 1 needs (or pass --cfg 1)")

    def batched(t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(0) if t.ndim == 2 else t

    negative = tensors.get("negative")
    return batched(tensors["positive"]), None if negative is None else batched(negative)


def _image_fields(path: Path | None, spec: WanSpec, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """SampleRequest's image fields (and TI2V's latent and noise mask) from an ``--image`` file."""
    if path is None:
        if spec.takes_image_latent:
            raise ValueError(
                f"this {spec.model_type} model ({spec.name}) needs the start image: pass --image FILE, a safetensors "
                "file with concat_latent_image and concat_mask" + (" and clip_vision" if spec.takes_clip else "")
            )
        return {}
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise ValueError(f"cannot read the image tensors {path}: {e}") from None
    unknown = sorted(set(tensors) - set(IMAGE_TENSORS))
    if unknown or not tensors:
        raise ValueError(f"{path} holds {unknown or 'nothing'}; an --image file holds {IMAGE_FILE}")
    fields: dict[str, torch.Tensor] = {}
    if "start_latent" in tensors:
        if spec.model_type != "ti2v":
            raise ValueError(
                f"start_latent is Wan2.2 TI2V 5B's start image; this {spec.model_type} model takes "
                + ("concat_latent_image and concat_mask" if spec.takes_image_latent else "no image")
            )
        fields["latent"], fields["noise_mask"] = start_frames_kept(tensors["start_latent"], shape)
    image, clip = tensors.get("concat_latent_image"), tensors.get("clip_vision")
    for branch in ("positive", "negative"):  # as WanImageToVideo sets them on both
        if image is not None:
            fields[f"{branch}_image"] = model_image_input(spec, shape, image, tensors.get("concat_mask"))
        if clip is not None:
            fields[f"{branch}_clip"] = clip.unsqueeze(0) if clip.ndim == 2 else clip
    return fields


def _request(args: argparse.Namespace, spec: WanSpec) -> SampleRequest:
    for name in ("width", "height", "frames", "batch"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive")
    positive, negative = _embeddings(args.text_embeddings, args.cfg != 1.0)
    stride = spec.vae_spatial_stride
    shape = (args.batch, spec.latent_channels, (args.frames - 1) // 4 + 1, args.height // stride, args.width // stride)
    fields = {"latent": torch.zeros(shape), **_image_fields(args.image, spec, shape)}
    return SampleRequest(
        positive=positive,
        negative=negative,
        seed=args.seed,
        steps=args.steps,
        cfg=args.cfg,
        shift=args.shift,
        sampler=args.sampler,
        scheduler=args.scheduler,
        low_noise_cfg=args.low_noise_cfg,
        **fields,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    env = RankEnv.from_environ()
    try:
        layout = layout_from_args(args, env.world_size) if env.world_size > 1 else None
        loras = tuple(lora_from_arg(arg) for arg in args.lora)
        recipe = Recipe(args.weights, args.weight_dtype, args.compute_dtype, loras=loras, model_choice=args.model,
                        low_noise_weights=args.low_noise_weights)  # fmt: skip
        spec = recipe_spec(recipe)
        request = _request(args, spec)
        check_run(recipe, spec, request, layout)  # before joining or loading anything
        recipe_deltas(recipe, spec)  # and the LoRA files against the model, from their headers
    except ValueError as e:
        parser.error(str(e))
    device = env.device(args.device)
    if env.world_size > 1:
        init_process_group(env, device, args.collective_timeout)
    try:
        engine = build_engine(recipe, device, layout)

        def progress(i: int, total: int, _x: torch.Tensor) -> None:
            if env.rank == 0:
                log.info("step %d/%d", i + 1, total)

        result = engine.sample(request, on_step=progress)
        if env.rank == 0:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            meta = {"seed": str(args.seed), "steps": str(args.steps), "cfg": str(args.cfg), "weights": args.weights}
            save_file({"latent": result.latent.contiguous()}, str(args.out), metadata=meta)
            log.info("wrote %s: latent %s, %s", args.out, tuple(result.latent.shape), result.summary())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
