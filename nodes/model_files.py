"""Where Wan DiT weights live in a ComfyUI install: files in ``diffusion_models``, folders in ``diffusers``."""

from __future__ import annotations

import os

import folder_paths

DIFFUSERS_SUFFIX = " (diffusers)"


def _diffusers_folders() -> dict[str, str]:
    """Model folders under ComfyUI's ``diffusers`` roots: a ``transformer/`` subfolder or a sharded index. Other
    entries (ComfyUI's own placeholder file, unreadable folders) are passed over."""
    found: dict[str, str] = {}
    try:
        roots = folder_paths.get_folder_paths("diffusers")
    except KeyError:
        return found
    for root in roots:
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if _is_wan_folder(path):
                found.setdefault(name + DIFFUSERS_SUFFIX, path)
    return found


def _is_wan_folder(path: str) -> bool:
    if not os.path.isdir(path):
        return False
    if os.path.isdir(os.path.join(path, "transformer")):
        return True
    try:
        return any(f.endswith(".safetensors.index.json") for f in os.listdir(path))
    except OSError:
        return False


def list_models() -> list[str]:
    files = [f for f in folder_paths.get_filename_list("diffusion_models") if f.endswith(".safetensors")]
    return files + list(_diffusers_folders())


def resolve_model(name: str) -> str:
    """Full path of a listed model; a clear error naming the folders searched when it is gone."""
    if name.endswith(DIFFUSERS_SUFFIX):
        folders = _diffusers_folders()
        if name in folders:
            return folders[name]
        roots = folder_paths.get_folder_paths("diffusers")
        raise FileNotFoundError(f"diffusers folder {name[: -len(DIFFUSERS_SUFFIX)]!r} not found in {roots}")
    path = folder_paths.get_full_path("diffusion_models", name)
    if path is None:
        raise FileNotFoundError(
            f"model file {name!r} not found in ComfyUI's diffusion_models folders "
            f"{folder_paths.get_folder_paths('diffusion_models')}; put the Wan2.1 T2V .safetensors there and refresh"
        )
    return path
