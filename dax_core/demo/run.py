"""The main job: run a shipped Wan workflow (Wan2.1 text-, image- or first-last-frame-to-video, Wan2.2 A14B with
two experts, Wan2.2 TI2V 5B) end to end through a headless ComfyUI.

    python -m dax_core demo [--comfyui PATH] [--workflow FILE.json] [--model FILE --text-encoder FILE --vae FILE
                            [--lora FILE] [--low-noise-model FILE] [--image FILE]]
                            [--width W --height H --length N --steps S --prompt TEXT --seed N --gpus N]

Without weights it writes (once, cached in $DAX_CACHE or ~/.cache/dax-demo) tiny random Wan DiTs (T2V, I2V,
FLF2V, a second T2V-shaped one as a Wan2.2 T2V A14B low-noise expert, two 36-channel ones without CLIP features as
the Wan2.2 I2V A14B experts, a 48-channel Wan2.2 TI2V one), a random T5-base
text encoder, random Wan2.1 and Wan2.2 VAEs, a random CLIP ViT-H vision tower, a random LoRA for the DiT (lightx2v's
key format) and a start image, takes the ones the workflow needs, and runs it small (64x64, 5 frames, 4 steps): the
video is noise, the point is that every node runs. With ``--model/--text-encoder/--vae`` (``--lora`` for a workflow
with a Load LoRA node, ``--low-noise-model`` for a two-expert one, ``--image`` for one that starts from an image and
``--clip-vision`` for one that encodes it with CLIP vision) it runs the workflow's own settings.
Each run writes into a folder of its own (``<cache>/runs/<date>-<time>-<pid>`` unless ``--output-dir`` is given):
the video and ComfyUI's log.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .clip_vision import write_random_clip_vision_h
from .comfy_server import (
    REPO_ROOT,
    ComfyServer,
    ComfyServerError,
    PromptFailed,
    PromptRejected,
    find_comfyui,
    link_input,
    link_models,
)
from .text_encoder import write_random_t5_base
from .vae import write_random_wan22_vae, write_random_wan_vae

log = logging.getLogger(__name__)

WORKFLOWS = REPO_ROOT / "workflows"
"""UI-format workflows, which ComfyUI's template browser lists (it does not look into subfolders)."""
API_WORKFLOWS = WORKFLOWS / "api"
"""Their API-format twins (for POST /prompt), under the same names."""
WORKFLOW = API_WORKFLOWS / "Wan2.1 text-to-video 1.3B (DAX).json"
# The tiny DiT is no Wan size with a published TeaCache polynomial or MagCache calibration: the step caches of a
# workflow run on it use the 14B ones (any would do: the video is noise).
TINY_SETTINGS = {"width": 64, "height": 64, "length": 5, "steps": 4, "step_cache_model": "wan2.1-t2v-14b"}
TINY_VERSION = "v1"  # bump when the generated files change, so stale caches are not reused

LOW_NOISE_LOADER = "DaxLoadWan.low_noise_model_name"
# loader (its class, or "class.widget" for a second file input) -> (its file widget, the ComfyUI folder it lists;
# "input" is ComfyUI's input folder, the others are model folders)
LOADERS = {
    "DaxLoadWan": ("model_name", "diffusion_models"),
    "CLIPLoader": ("clip_name", "text_encoders"),
    "VAELoader": ("vae_name", "vae"),
    "DaxLoadLora": ("lora_name", "loras"),
    LOW_NOISE_LOADER: ("low_noise_model_name", "diffusion_models"),
    "CLIPVisionLoader": ("clip_name", "clip_vision"),
    "LoadImage": ("image", "input"),
}
OPTIONAL_LOADERS = ("DaxLoadLora", LOW_NOISE_LOADER, "CLIPVisionLoader", "LoadImage")  # the others: every workflow
NO_FILE = "none"  # Load Wan DAX's low_noise_model_name of a one-model workflow
INPUT_FOLDER = "input"
# The node that makes the latent (and its size) in each kind of workflow, and the variant of DiT the kind loads.
LATENT_NODES = {
    "EmptyHunyuanLatentVideo": "t2v", "WanImageToVideo": "i2v", "WanFirstLastFrameToVideo": "flf2v",
    "Wan22ImageToVideoLatent": "ti2v",
}  # fmt: skip
# setting -> the (node class, input) it sets. The latent and sampler nodes must be in the workflow; the others are
# set on every node of their class the workflow has, if any. "latent" is the workflow's node of LATENT_NODES.
NODE_SETTINGS = {
    **{key: ("latent", key) for key in ("width", "height", "length")},
    **{key: ("DaxMultiGPUSampler", key) for key in ("steps", "seed", "cfg", "shift", "gpus")},
}
OPTIONAL_NODE_SETTINGS = {"step_cache_model": (("DaxTeacache", "coefficients"), ("DaxMagcache", "model"))}
# EmptyHunyuanLatentVideo rounds a size down to what the Wan VAE and DiT take: the demo refuses one it would change
PIXEL_STEP = 16  # the VAE's 8-pixel blocks, then the DiT's 2 x 2 latent patches
WAN22_PIXEL_STEP = 32  # the Wan2.2 VAE's 16-pixel blocks, then the patches
FRAME_STEP = 4  # the VAE keeps the first frame, then one latent frame per 4 frames
SUMMARY_KEY = "dax_summary"  # what the Multi-GPU Sampler reports in its node's outputs


@dataclass(frozen=True)
class ModelFiles:
    """The three weight files (or, for the DiT, a diffusers folder) a Wan workflow needs, the LoRA of a workflow
    with a Load LoRA node, the low-noise expert of a two-expert one, and for workflows that start from an image the
    CLIP vision model and the image(s).

    ``image_models``: the DiT of each image variant ("i2v", "flf2v") beside ``model`` (the tiny Wan2.1 models have
    all three); ``for_workflow`` picks the one a workflow loads.
    """

    model: Path
    text_encoder: Path
    vae: Path
    lora: Path | None = None
    clip_vision: Path | None = None
    image: Path | None = None
    image_models: tuple[tuple[str, Path], ...] = ()
    low_noise_model: Path | None = None

    def by_loader(self) -> dict[str, Path]:
        files = {"DaxLoadWan": self.model, "CLIPLoader": self.text_encoder, "VAELoader": self.vae}
        optional = {"DaxLoadLora": self.lora, LOW_NOISE_LOADER: self.low_noise_model,
                    "CLIPVisionLoader": self.clip_vision, "LoadImage": self.image}  # fmt: skip
        return {**files, **{loader: path for loader, path in optional.items() if path is not None}}

    def for_workflow(self, prompt: dict[str, Any]) -> ModelFiles:
        """These files with the DiT of the variant ``prompt`` loads (its latent node tells: ``LATENT_NODES``)."""
        models = dict(self.image_models)
        variant = workflow_variant(prompt)
        if variant not in models:
            return self  # text-to-video, or real weights: the given DiT is the workflow's
        return dataclasses.replace(self, model=models[variant])

    def link_into(self, base: Path) -> None:
        """Make the files visible to a ComfyUI whose base directory is ``base``."""
        model_folder = "diffusers" if self.model.is_dir() else "diffusion_models"
        models: dict[str, list[Path]] = {model_folder: [self.model], "text_encoders": [self.text_encoder],
                                         "vae": [self.vae]}  # fmt: skip
        models.setdefault("diffusion_models", []).extend(path for _, path in self.image_models)
        if self.low_noise_model is not None:
            models.setdefault("diffusion_models", []).append(self.low_noise_model)
        if self.lora is not None:
            models["loras"] = [self.lora]
        if self.clip_vision is not None:
            models["clip_vision"] = [self.clip_vision]
        link_models(base, models)
        if self.image is not None:
            link_input(base, self.image)


def cache_dir() -> Path:
    return Path(os.environ.get("DAX_CACHE") or Path.home() / ".cache" / "dax-demo")


def run_dir(cache: Path | None = None) -> Path:
    """A new folder for one run's video and log: runs of the same user never share one."""
    return (cache or cache_dir()) / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def check_video_size(settings: dict[str, Any], pixel_step: int = PIXEL_STEP) -> None:
    """Raise ValueError, with the nearest sizes that work, for a width, height or length the latent node would
    round: a demo that asked for 100 pixels must not quietly make 96 (``pixel_step``: the workflow's, 32 for a Wan2.2
    TI2V one)."""
    for key in ("width", "height"):
        value = settings.get(key)
        if value is not None and (value < pixel_step or value % pixel_step):
            lower = value // pixel_step * pixel_step
            use = f"{lower} or {lower + pixel_step}" if lower else str(pixel_step)
            raise ValueError(f"--{key} {value} is not a multiple of {pixel_step}: use {use}")
    length = settings.get("length")
    if length is not None and (length < 1 or (length - 1) % FRAME_STEP):
        lower = max(1, (length - 1) // FRAME_STEP * FRAME_STEP + 1)
        raise ValueError(f"--length {length} is not 4k+1 frames: use {lower} or {lower + FRAME_STEP}")


def _cached(path: Path, writer: Callable[[Path], object]) -> Path:
    """``path``, written by ``writer`` unless it exists (written to a temporary name, then renamed)."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_tiny_dit(path: Path, variant: str = "t2v") -> None:
    from dax_core.models.tiny import write_tiny_model

    write_tiny_model(path, variant=variant, dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=768,
                     naming="comfy", dtype="bf16")  # fmt: skip


def _write_start_image(path: Path) -> None:
    """A 96 x 80 PNG of smooth colours, to start image-to-video workflows from."""
    from PIL import Image

    y, x = torch.meshgrid(torch.linspace(0, 1, 80), torch.linspace(0, 1, 96), indexing="ij")
    rgb = torch.stack([x, y, 1 - x * y], dim=-1).mul(255).round().to(torch.uint8)
    Image.fromarray(rgb.numpy()).save(path, format="PNG")


def _write_tiny_expert(path: Path) -> None:
    from dax_core.models.tiny import write_tiny_model

    write_tiny_model(path, dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=768, naming="comfy", dtype="bf16",
                     seed=1)  # fmt: skip


def _write_tiny_i2v_expert(path: Path, seed: int) -> None:
    from dax_core.models.tiny import write_tiny_model

    write_tiny_model(path, variant="i2v", clip_dim=0, dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=768,
                     naming="comfy", dtype="bf16", seed=seed)  # fmt: skip


def _write_tiny_ti2v(path: Path) -> None:
    from dax_core.models.tiny import write_tiny_model

    write_tiny_model(path, dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=768, naming="comfy", dtype="bf16",
                     seed=2, variant="ti2v")  # fmt: skip


WORKFLOW_KINDS = ("wan2.1", "wan2.2-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v")


def workflow_kind(prompt: dict[str, Any]) -> str:
    """Which tiny models an API-format workflow needs: a Wan2.1 one, a two-expert Wan2.2 A14B one (a Load Wan DAX
    with a low-noise expert: image-to-video with WanImageToVideo's latent, else text-to-video) or a Wan2.2 TI2V one
    (the Wan2.2 latent node)."""
    if any(node["class_type"] == "Wan22ImageToVideoLatent" for node in prompt.values()):
        return "wan2.2-ti2v"
    loaders = [node["inputs"] for node in prompt.values() if node["class_type"] == "DaxLoadWan"]
    if any(inputs.get("low_noise_model_name", NO_FILE) != NO_FILE for inputs in loaders):
        return "wan2.2-i2v-a14b" if workflow_variant(prompt) == "i2v" else "wan2.2-a14b"
    return "wan2.1"


def tiny_models(cache: Path | None = None, kind: str = "wan2.1") -> ModelFiles:
    """The tiny models of a workflow ``kind`` (``WORKFLOW_KINDS``), generated on first use: the tiny DiTs (768-wide
    text input; the I2V and FLF2V ones take ViT-H's 1280-wide image features), random T5-base, random Wan2.1 VAE,
    random CLIP ViT-H vision tower, a random LoRA for the T2V DiT in lightx2v's key format and a start image; for
    wan2.2-a14b a second tiny DiT as the low-noise expert; for wan2.2-i2v-a14b two tiny 36-channel DiTs without CLIP
    features as the two experts; for wan2.2-ti2v a tiny 48-channel DiT and a random Wan2.2 VAE instead."""
    from dax_core.lora.tiny import write_tiny_lora
    from dax_core.models.loading import inspect_weights

    if kind not in WORKFLOW_KINDS:
        raise ValueError(f"workflow kind {kind!r} is not one of {', '.join(WORKFLOW_KINDS)}")
    cache = cache or cache_dir()
    model = _cached(cache / f"dax_tiny_wan_t2v_{TINY_VERSION}.safetensors", _write_tiny_dit)
    spec = inspect_weights(model).spec
    image_models = tuple(
        (variant, _cached(cache / f"dax_tiny_wan_{variant}_{TINY_VERSION}.safetensors",
                          lambda p, variant=variant: _write_tiny_dit(p, variant)))
        for variant in ("i2v", "flf2v")
    )  # fmt: skip
    files = ModelFiles(
        model=model,
        text_encoder=_cached(cache / f"dax_random_t5_base_{TINY_VERSION}.safetensors", write_random_t5_base),
        vae=_cached(cache / f"dax_random_wan21_vae_{TINY_VERSION}.safetensors", write_random_wan_vae),
        lora=_cached(cache / f"dax_tiny_lora_lightx2v_{TINY_VERSION}.safetensors", lambda p: write_tiny_lora(p, spec)),
        clip_vision=_cached(cache / f"dax_random_clip_vision_h_{TINY_VERSION}.safetensors", write_random_clip_vision_h),
        image=_cached(cache / f"dax_start_image_{TINY_VERSION}.png", _write_start_image),
        image_models=image_models,
    )
    if kind == "wan2.2-a14b":
        expert = _cached(cache / f"dax_tiny_wan_t2v_low_noise_{TINY_VERSION}.safetensors", _write_tiny_expert)
        return dataclasses.replace(files, low_noise_model=expert)
    if kind == "wan2.2-i2v-a14b":
        high, low = (
            _cached(cache / f"dax_tiny_wan22_i2v_{expert}_noise_{TINY_VERSION}.safetensors",
                    lambda p, seed=seed: _write_tiny_i2v_expert(p, seed))
            for expert, seed in (("high", 3), ("low", 4))
        )  # fmt: skip
        return dataclasses.replace(files, model=high, low_noise_model=low, image_models=())
    if kind == "wan2.2-ti2v":
        return dataclasses.replace(
            files,
            model=_cached(cache / f"dax_tiny_wan22_ti2v_{TINY_VERSION}.safetensors", _write_tiny_ti2v),
            vae=_cached(cache / f"dax_random_wan22_vae_{TINY_VERSION}.safetensors", write_random_wan22_vae),
        )
    return files


def workflow_variant(prompt: dict[str, Any]) -> str:
    """The DiT variant an API-format workflow loads ("t2v", "i2v", "flf2v"), told by its latent node."""
    return LATENT_NODES[_latent_node(prompt)["class_type"]]


def _latent_node(prompt: dict[str, Any]) -> dict[str, Any]:
    found = [node for node in prompt.values() if node["class_type"] in LATENT_NODES]
    if len(found) != 1:
        raise ValueError(f"the workflow has {len(found)} latent nodes ({', '.join(LATENT_NODES)}), expected one")
    return found[0]


def shipped_workflows() -> list[Path]:
    """The API-format workflows in workflows/api (each has a UI-format twin of the same name in workflows/)."""
    return sorted(API_WORKFLOWS.glob("*.json"))


def is_ui_format(workflow: dict[str, Any]) -> bool:
    """A workflow as the editor saves it (nodes and links), not an API-format prompt (node id -> inputs)."""
    return isinstance(workflow.get("nodes"), list) and "links" in workflow


def load_workflow(path: Path = WORKFLOW) -> dict[str, Any]:
    """An API-format workflow. Given a UI-format one, its API twin (the same name in an ``api`` folder beside it)."""
    path = Path(path)
    workflow = json.loads(path.read_text(encoding="utf-8"))
    if not is_ui_format(workflow):
        return workflow
    twin = path.parent / API_WORKFLOWS.name / path.name
    if not twin.is_file():
        raise ValueError(
            f"{path} is a UI-format workflow and has no API-format twin at {twin}: export one from ComfyUI "
            "(Workflow > Export (API)) and pass that file"
        )
    return json.loads(twin.read_text(encoding="utf-8"))


def node_of(prompt: dict[str, Any], class_type: str | tuple[str, ...]) -> dict[str, Any]:
    """The one node of ``class_type`` (or of one of several classes) in an API-format prompt."""
    classes = (class_type,) if isinstance(class_type, str) else class_type
    found = [node for node in prompt.values() if node["class_type"] in classes]
    if len(found) != 1:
        raise ValueError(f"the workflow has {len(found)} {' or '.join(classes)} nodes, expected one")
    return found[0]


def loader_class(loader: str) -> str:
    """The node class of a ``LOADERS`` key."""
    return loader.split(".")[0]


def model_option(object_info: dict[str, Any], loader: str, path: Path) -> str:
    """The entry of a loader's file list that names ``path`` (a diffusers folder is listed with a suffix)."""
    widget, folder = LOADERS[loader]
    class_type = loader_class(loader)
    if class_type not in object_info:
        raise ValueError(f"ComfyUI has no {class_type} node: is the DAX pack installed and importing cleanly?")
    inputs = object_info[class_type]["input"]
    spec = {**inputs.get("optional", {}), **inputs["required"]}[widget]
    options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
    for option in options:
        if option == path.name or (path.is_dir() and option.startswith(path.name + " ")):
            return option
    raise ValueError(f"{class_type}.{widget} does not list {path.name} (from models/{folder}); it lists {options}")


def configure(
    prompt: dict[str, Any], model_names: dict[str, str], settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A copy of an API-format Wan workflow with its loaders' files and the given settings replaced.

    ``model_names``: loader class -> listed file name. ``settings`` keys: width, height, length (latent node),
    steps, seed, cfg, shift, gpus (sampler), prompt and negative (the texts wired to the sampler), step_cache_model
    (the published model whose TeaCache polynomial and MagCache calibration the step cache nodes use, if any).
    """
    prompt = copy.deepcopy(prompt)
    for loader, name in model_names.items():
        class_type, widget = loader_class(loader), LOADERS[loader][0]
        nodes = [n for n in prompt.values() if n["class_type"] == class_type]
        if loader in OPTIONAL_LOADERS and not any(n["inputs"].get(widget, NO_FILE) != NO_FILE for n in nodes):
            continue  # the workflow has no such node, or leaves the file out
        if not nodes:
            raise ValueError(f"the workflow has no {class_type} node")
        for node in nodes:  # FLF2V loads two images
            node["inputs"][widget] = name
    sampler = node_of(prompt, "DaxMultiGPUSampler")["inputs"]
    for key, value in (settings or {}).items():
        if value is None:
            continue
        if key in NODE_SETTINGS:
            class_type, name = NODE_SETTINGS[key]
            node = _latent_node(prompt) if class_type == "latent" else node_of(prompt, class_type)
            node["inputs"][name] = value
        elif key in OPTIONAL_NODE_SETTINGS:
            for class_type, name in OPTIONAL_NODE_SETTINGS[key]:
                for node in prompt.values():
                    if node["class_type"] == class_type:
                        node["inputs"][name] = value
        elif key in ("prompt", "negative"):
            source = sampler["positive" if key == "prompt" else "negative"][0]
            prompt[source]["inputs"]["text"] = value
        else:
            raise ValueError(f"unknown workflow setting {key!r}")
    return prompt


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dax_core demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", type=Path, help="ComfyUI checkout (default: $COMFYUI_PATH, the one holding this pack, "
                   "~/ComfyUI)")  # fmt: skip
    p.add_argument("--workflow", type=Path, default=WORKFLOW, help=f"workflow to run: API format, or a shipped "
                   f"UI-format one of workflows/ (default: {WORKFLOW.relative_to(REPO_ROOT)})")  # fmt: skip
    p.add_argument("--model", type=Path, help="Wan2.1 DiT of the workflow's variant: .safetensors file or diffusers "
                   "folder")  # fmt: skip
    p.add_argument("--clip-vision", type=Path, help="CLIP vision model (clip_vision_h) for an image-to-video workflow")
    p.add_argument("--image", type=Path, help="start image (FLF2V: start and end) of a workflow with a LoadImage node "
                   "(image-to-video, Wan2.2 TI2V)")  # fmt: skip
    p.add_argument("--text-encoder", type=Path, help="umt5-xxl text encoder .safetensors (ComfyUI's)")
    p.add_argument("--vae", type=Path, help="Wan2.1 VAE .safetensors")
    p.add_argument("--lora", type=Path, help="LoRA .safetensors for a workflow with a Load LoRA (DAX) node")
    p.add_argument("--low-noise-model", type=Path, help="the low-noise expert of a two-expert Wan2.2 A14B workflow "
                   "(--model is then the high-noise expert)")  # fmt: skip
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--length", type=int, help="frames (4k+1)")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--gpus", type=int)
    p.add_argument("--prompt", help="positive prompt (default: the workflow's)")
    p.add_argument("--negative", help="negative prompt (default: Wan's)")
    p.add_argument("--device", choices=("cpu", "gpu"), help="where ComfyUI runs (default: cpu for the tiny models; "
                   "for real weights the GPU when CUDA is available)")  # fmt: skip
    p.add_argument("--output-dir", type=Path, help="where the video and ComfyUI's log go (default: a new folder "
                   "under <cache>/runs for each run)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed for the prompt (default 3600)")
    return p


@dataclass(frozen=True)
class DemoRun:
    """What one run left: the files the workflow saved, the sampler's summary and ComfyUI's log."""

    saved: list[Path]
    summary: list[str]
    log: Path


def run(
    comfyui: Path,
    files: ModelFiles,
    settings: dict[str, Any],
    output_dir: Path,
    *,
    workflow: dict[str, Any] | None = None,
    cpu: bool = True,
    timeout: float = 3600.0,
) -> DemoRun:
    """Run an API-format ``workflow`` (default: the shipped 1.3B one) with ``files`` and ``settings`` in a fresh
    headless ComfyUI that writes its outputs and its log (``comfyui.log``) into ``output_dir``."""
    workflow = workflow if workflow is not None else load_workflow()
    pixel_step = WAN22_PIXEL_STEP if workflow_kind(workflow) == "wan2.2-ti2v" else PIXEL_STEP
    check_video_size(settings, pixel_step)  # before anything starts
    size = [_setting(workflow, settings, key) for key in ("width", "height", "length", "steps")]
    log.info("running at %s x %s, %s frames, %s steps; the video and ComfyUI's log go to %s", *size, output_dir)
    comfy_log = Path(output_dir) / "comfyui.log"
    with tempfile.TemporaryDirectory(prefix="dax-demo-") as base:
        files.link_into(Path(base))
        with ComfyServer(comfyui, Path(base), output_dir=output_dir, cpu=cpu, log_path=comfy_log) as server:
            try:
                info = server.object_info()
                files = files.for_workflow(workflow)
                names = {cls: model_option(info, cls, path) for cls, path in files.by_loader().items()}
                outputs = server.run(configure(workflow, names, settings), timeout=timeout)
            except Exception:
                log.error("ComfyUI's log: %s", comfy_log)
                raise
            summary = [line for ui in outputs.values() for line in ui.get(SUMMARY_KEY, [])]
            return DemoRun(server.output_files(outputs), summary, comfy_log)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    comfyui = args.comfyui or find_comfyui()
    if comfyui is None:
        log.error("no ComfyUI found: pass --comfyui PATH or set $COMFYUI_PATH")
        return 2
    given = {"--model": args.model, "--text-encoder": args.text_encoder, "--vae": args.vae}
    missing = [flag for flag, value in given.items() if value is None]
    if 0 < len(missing) < len(given):
        log.error("real weights need all of --model, --text-encoder and --vae; missing %s", ", ".join(missing))
        return 2
    settings = {key: getattr(args, key) for key in ("width", "height", "length", "steps", "seed", "gpus")}
    settings.update(prompt=args.prompt, negative=args.negative)
    try:
        workflow = load_workflow(args.workflow)  # a missing or malformed file fails before anything starts
        if missing:
            log.info("no weights given: using tiny random models (the video will be noise)")
            files = tiny_models(kind=workflow_kind(workflow))
            settings = {**settings, **{k: v for k, v in TINY_SETTINGS.items() if settings.get(k) is None}}
        else:
            if args.lora is None and any(n["class_type"] == "DaxLoadLora" for n in workflow.values()):
                raise ValueError(f"{args.workflow.name} loads a LoRA: pass it with --lora FILE")
            if args.clip_vision is None and any(n["class_type"] == "CLIPVisionLoader" for n in workflow.values()):
                raise ValueError(f"{args.workflow.name} encodes its image with CLIP vision: pass --clip-vision FILE")
            if args.low_noise_model is None and workflow_kind(workflow) in ("wan2.2-a14b", "wan2.2-i2v-a14b"):
                raise ValueError(f"{args.workflow.name} has two experts: pass the low-noise one with --low-noise-model")
            if args.image is None and any(n["class_type"] == "LoadImage" for n in workflow.values()):
                raise ValueError(f"{args.workflow.name} starts from an image: pass it with --image FILE")
            files = ModelFiles(
                args.model, args.text_encoder, args.vae, args.lora, clip_vision=args.clip_vision, image=args.image,
                low_noise_model=args.low_noise_model,
            )  # fmt: skip
        output_dir = args.output_dir or run_dir()
        cpu = args.device == "cpu" if args.device else bool(missing) or not torch.cuda.is_available()
        done = run(comfyui, files, settings, output_dir, workflow=workflow, cpu=cpu, timeout=args.timeout)
    except (ComfyServerError, PromptRejected, PromptFailed, OSError, ValueError) as e:
        log.error("demo failed: %s", e)
        return 1
    for line in done.summary:
        log.info("sampler: %s", line)
    log.info("ComfyUI's log: %s", done.log)
    if not done.saved:
        log.error("the workflow ran but saved no file")
        return 1
    for path in done.saved:
        log.info("video written to %s", path)
    return 0


def _setting(workflow: dict[str, Any], settings: dict[str, Any], key: str) -> Any:
    """The value ``key`` will have: the one given, else the workflow's own."""
    if settings.get(key) is not None:
        return settings[key]
    class_type, name = NODE_SETTINGS[key]
    return (_latent_node(workflow) if class_type == "latent" else node_of(workflow, class_type))["inputs"][name]
