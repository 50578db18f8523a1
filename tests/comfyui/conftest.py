"""The ComfyUI tier: one headless ComfyUI (a subprocess on 127.0.0.1) shared by the whole session.

Its base directory holds the pack (symlinked into custom_nodes), the tiny demo models (and LoRA), empty placeholders
under the file names of every shipped workflow's loaders (so their file lists validate), two wrong "DiT" files (a VAE
and a non-safetensors) and a LoRA for another model family.
"""

from __future__ import annotations

import getpass
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from dax_core.demo.comfy_server import ComfyServer
from dax_core.demo.run import (
    INPUT_FOLDER,
    LOADERS,
    NO_FILE,
    TINY_SETTINGS,
    WORKFLOW,
    WORKFLOW_KINDS,
    ModelFiles,
    configure,
    load_workflow,
    loader_class,
    shipped_workflows,
    tiny_models,
    workflow_kind,
)

INDUCTOR_CACHE = os.environ.get(
    "TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
)
TEST_NODES = Path(__file__).resolve().parent / "custom_nodes" / "dax_test_conditioning"
"""A test-only node beside the pack (``DaxTestConditioningWidth``)."""
# kind -> file name in models/diffusion_models
WRONG_DIT_FILES = {"vae": "wrong_dit_is_a_vae.safetensors", "garbage": "wrong_dit_is_garbage.safetensors"}
WRONG_LORA_FILE = "flux_style_lora.safetensors"  # in models/loras: keys of a Flux LoRA


def placeholders() -> set[tuple[str, str]]:
    """(folder, file name) of every loader's file in the shipped workflows (folder: a model folder, or ComfyUI's
    input folder)."""
    found = set()
    for path in shipped_workflows():
        for node in load_workflow(path).values():
            for loader, (widget, folder) in LOADERS.items():
                name = node["inputs"].get(widget, NO_FILE)
                if node["class_type"] == loader_class(loader) and name != NO_FILE:
                    found.add((folder, name))
    return found


@pytest.fixture(scope="session")
def demo_models() -> ModelFiles:
    """Tiny DiT, random T5-base and random Wan VAE (cached in $DAX_CACHE or ~/.cache/dax-demo)."""
    return tiny_models()


@pytest.fixture(scope="session")
def demo_models_of_every_kind(demo_models: ModelFiles) -> dict[str, ModelFiles]:
    """The tiny models of every workflow kind (Wan2.1, Wan2.2 A14B's two experts, Wan2.2 TI2V)."""
    return {kind: tiny_models(kind=kind) for kind in WORKFLOW_KINDS}


@pytest.fixture(scope="session")
def comfy_server(
    comfyui_dir: Path,
    demo_models: ModelFiles,
    demo_models_of_every_kind: dict[str, ModelFiles],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ComfyServer]:
    base = tmp_path_factory.mktemp("comfyui-base")
    for files in demo_models_of_every_kind.values():
        files.link_into(base)
    (base / "tmp").mkdir()
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / TEST_NODES.name).symlink_to(TEST_NODES, target_is_directory=True)
    for folder, name in placeholders():
        place = base / INPUT_FOLDER if folder == INPUT_FOLDER else base / "models" / folder
        place.mkdir(parents=True, exist_ok=True)
        (place / name).write_bytes(b"")
    diffusion_models = base / "models" / "diffusion_models"
    (diffusion_models / WRONG_DIT_FILES["vae"]).symlink_to(demo_models.vae)
    (diffusion_models / WRONG_DIT_FILES["garbage"]).write_bytes(b"this is not a safetensors file\n" * 64)
    flux = {"diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight": torch.zeros(4, 3072),
            "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight": torch.zeros(9216, 4)}  # fmt: skip
    save_file(flux, str(base / "models" / "loras" / WRONG_LORA_FILE))
    # a temp folder of its own, to see what is left there; torch.compile's cache stays where it is shared
    env = {"TMPDIR": str(base / "tmp"), "TORCHINDUCTOR_CACHE_DIR": INDUCTOR_CACHE}
    # previews on, as a user turns them on: the samplers of every prompt make them, through one GPU and the group
    previews = ["--preview-method", "auto"]
    with ComfyServer(comfyui_dir, base, start_timeout=120.0, env=env, extra_args=previews) as server:
        yield server


@pytest.fixture(scope="session")
def server_tmp(comfy_server: ComfyServer) -> Path:
    """The server's own temp folder (its TMPDIR): what its worker groups leave in temp shows up there."""
    return comfy_server.base / "tmp"


@pytest.fixture(scope="session")
def wrong_dit_files() -> dict[str, str]:
    """Files in the server's diffusion_models that are not Wan DiTs: kind ("vae", "garbage") -> file name."""
    return dict(WRONG_DIT_FILES)


@pytest.fixture(scope="session")
def wrong_lora_file() -> str:
    """A Flux-style LoRA in the server's models/loras (it matches no layer of a Wan model)."""
    return WRONG_LORA_FILE


@pytest.fixture(scope="session")
def tiny_prompt(demo_models_of_every_kind: dict[str, ModelFiles]) -> Callable[..., dict[str, Any]]:
    """``tiny_prompt(seed=1, DaxLoadWan="other.safetensors", workflow=path)``: a shipped API workflow (the 1.3B one
    unless ``workflow`` names another) on the tiny models of its kind, with the tiny settings and any others given."""

    def make(workflow: Path = WORKFLOW, **overrides: Any) -> dict[str, Any]:
        prompt = load_workflow(workflow)
        files = demo_models_of_every_kind[workflow_kind(prompt)].for_workflow(prompt)
        names = {cls: path.name for cls, path in files.by_loader().items()}
        names.update({k: v for k, v in overrides.items() if k in names})
        settings = {**TINY_SETTINGS, **{k: v for k, v in overrides.items() if k not in names}}
        return configure(prompt, names, settings)

    return make
