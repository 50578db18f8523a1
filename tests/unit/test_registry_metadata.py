"""pyproject.toml as the ComfyUI registry reads it: ComfyUI's own parser of a custom node's metadata."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from tests.environment import REPO

RAW_GITHUB = "https://raw.githubusercontent.com/"


@pytest.fixture(scope="module")
def config(comfyui_importable: Path):
    from comfy_config import config_parser

    return config_parser.extract_node_configuration(str(REPO))


def _comfyui_version(comfyui: Path) -> str:
    text = (comfyui / "comfyui_version.py").read_text(encoding="utf-8")
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def test_registry_fields_are_filled(config, comfyui_importable: Path) -> None:
    project, comfy = config.project, config.tool_comfy
    assert project.name == "comfyui-dax" and re.fullmatch(r"\d+\.\d+\.\d+", project.version)
    assert comfy.publisher_id and comfy.display_name
    assert project.urls.repository.startswith("https://github.com/")
    assert project.urls.issues == project.urls.repository + "/issues"
    # the parser keeps only classifiers the registry knows: an unknown one would leave these empty
    assert project.supported_os == ["POSIX :: Linux"]
    assert project.supported_accelerators == ["GPU :: NVIDIA CUDA"]
    # the ComfyUI this pack is tested with satisfies what it declares
    assert project.supported_comfyui_version == f">={_comfyui_version(comfyui_importable)}"


def test_dependencies_leave_torch_to_comfyui(config) -> None:
    names = {re.split(r"[<>=!~ ;\[]", dep, maxsplit=1)[0].lower() for dep in config.project.dependencies}
    assert names == {"safetensors", "einops", "psutil"}
    requirements = (REPO / "requirements.txt").read_text(encoding="utf-8")
    listed = {re.split(r"[<>=!~ ;\[#]", line, maxsplit=1)[0].lower() for line in requirements.splitlines()}
    assert names <= listed and "torch" not in listed


def test_icon_is_the_committed_picture(config) -> None:
    icon = config.tool_comfy.icon
    assert icon.startswith(RAW_GITHUB + config.project.urls.repository.removeprefix("https://github.com/") + "/")
    path = REPO / icon.split("/main/", 1)[1]
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (400, 400)
