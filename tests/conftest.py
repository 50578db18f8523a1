"""Fixtures shared by every tier: the repository on sys.path and the ComfyUI checkout to test against."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dax_core.demo.comfy_server import find_comfyui  # noqa: E402


def comfyui_path() -> Path | None:
    """$COMFYUI_PATH, else the ComfyUI whose custom_nodes holds this pack, else ~/ComfyUI; None when none is found."""
    return find_comfyui(REPO)


@pytest.fixture(scope="session")
def comfyui_dir() -> Path:
    """The ComfyUI checkout (tests needing one skip when none is found)."""
    path = comfyui_path()
    if path is None:
        pytest.skip(
            "no ComfyUI checkout found: set $COMFYUI_PATH, install this pack in <ComfyUI>/custom_nodes, "
            "or have ~/ComfyUI"
        )
    return path
