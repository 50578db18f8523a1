"""Fixtures of the unit tier."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.unit.group_helpers import in_process, private_tmp, tiny_recipe, tiny_request


@pytest.fixture(scope="session")
def comfyui_importable(comfyui_dir: Path) -> Path:
    """ComfyUI's packages importable in this process (skips when no checkout is found)."""
    if str(comfyui_dir) not in sys.path:
        sys.path.insert(0, str(comfyui_dir))
    import comfy.cli_args

    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True  # what `main.py --cpu` sets; model_management reads it at import
    return comfyui_dir


@pytest.fixture
def fresh_dynamo():
    """torch.compile's caches and counters emptied before and after a test (PyTorch bounds recompiles per code
    object, so compile tests must not inherit each other's graphs)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """The worker-group tests' tiny float32 model, written once per test module."""
    return tiny_recipe(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reference(recipe):
    """What one process gives for ``recipe`` and the tiny request: the worker groups' expected result."""
    return in_process(recipe, tiny_request())


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    """A temp folder of the test module's own, as the system temp folder of this process and of the groups it
    starts: what a group leaves behind shows up there."""
    with private_tmp(tmp_path_factory.mktemp("tmp")) as folder:
        yield folder
