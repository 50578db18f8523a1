"""Fixtures of the unit tier."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _find_comfyui() -> Path | None:
    candidates = [os.environ.get("COMFYUI_PATH"), REPO.parents[1] if REPO.parent.name == "custom_nodes" else None]
    candidates.append(Path.home() / "ComfyUI")
    for c in candidates:
        if c and (Path(c) / "comfy" / "ldm" / "wan" / "model.py").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def comfyui_importable() -> Path:
    """ComfyUI's packages importable in this process (skips when no checkout is found)."""
    path = _find_comfyui()
    if path is None:
        pytest.skip("no ComfyUI checkout found ($COMFYUI_PATH, the ComfyUI holding this pack, or ~/ComfyUI)")
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    import comfy.cli_args
    import torch

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets; model_management reads it at import
    return path
