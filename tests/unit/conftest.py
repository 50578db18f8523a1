"""Fixtures of the unit tier."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def comfyui_importable(comfyui_dir: Path) -> Path:
    """ComfyUI's packages importable in this process (skips when no checkout is found)."""
    if str(comfyui_dir) not in sys.path:
        sys.path.insert(0, str(comfyui_dir))
    import comfy.cli_args
    import torch

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets; model_management reads it at import
    return comfyui_dir
