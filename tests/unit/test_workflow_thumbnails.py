"""The template browser's cards: a thumbnail beside every shipped workflow, drawn by tools/workflow_thumbnails.py."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from dax_core.demo.run import API_WORKFLOWS, WORKFLOWS, load_workflow
from tests.environment import tool_module

thumbnails = tool_module("workflow_thumbnails")

TEMPLATES = thumbnails.templates()
# Pictures are compared shrunk to 128 x 128 (box filter), where a fresh drawing differs from the committed JPEG by
# its compression (quality 85: a mean of 0.6-1.0 level of 255 here) and by another Pillow's font rasteriser (a
# fraction of the text's pixels): 4 levels allow both, while a card whose chain of boxes changed differs by about 15
# (the test below checks that it would fail). A changed setting alone (one line of small text) stays under it.
COMPARED_SIZE = 128
STALE_MEAN_DIFFERENCE = 4.0


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    small = [im.convert("RGB").resize((COMPARED_SIZE,) * 2, Image.Resampling.BOX) for im in (a, b)]
    return sum(ImageStat.Stat(ImageChops.difference(*small)).mean) / 3


def test_the_template_folder_holds_ui_workflows_their_thumbnails_and_the_api_folder() -> None:
    assert TEMPLATES, "no workflow in workflows/"
    for path in TEMPLATES:
        assert thumbnails.api_twin(path) == API_WORKFLOWS / path.name
        assert "nodes" in json.loads(path.read_text(encoding="utf-8")), f"{path.name} is not in UI format"
    expected = {"api"} | {f"{p.stem}{ext}" for p in TEMPLATES for ext in (".json", ".jpg")}
    assert {p.name for p in WORKFLOWS.iterdir()} == expected


@pytest.mark.parametrize("workflow", TEMPLATES, ids=[p.stem for p in TEMPLATES])
def test_each_workflow_has_a_current_square_jpeg(workflow: Path) -> None:
    picture = thumbnails.thumbnail_path(workflow)
    assert picture.stat().st_size < 100_000, "keep the committed thumbnails small"
    with Image.open(picture) as committed:
        assert committed.format == "JPEG" and committed.size == (thumbnails.SIZE, thumbnails.SIZE)
        fresh = thumbnails.render(load_workflow(thumbnails.api_twin(workflow)))
        difference = _mean_difference(fresh, committed)
        assert difference < STALE_MEAN_DIFFERENCE, f"{picture.name} is stale: run python tools/workflow_thumbnails.py"


def test_a_changed_chain_would_fail_the_staleness_check() -> None:
    fast = API_WORKFLOWS / "Wan2.1 text-to-video 14B, all accelerations (DAX).json"
    prompt = load_workflow(fast)
    by_class = {node["class_type"]: node_id for node_id, node in prompt.items()}
    changed = copy.deepcopy(prompt)  # the sampler takes the model straight from TeaCache: no Compile box
    changed[by_class["DaxMultiGPUSampler"]]["inputs"]["dax_model"] = [by_class["DaxTeacache"], 0]
    with Image.open(thumbnails.thumbnail_path(WORKFLOWS / fast.name)) as committed:
        assert _mean_difference(thumbnails.render(changed), committed) > STALE_MEAN_DIFFERENCE


def test_the_chain_follows_the_model_from_the_loader_to_the_sampler() -> None:
    classes = {}
    for path in API_WORKFLOWS.glob("*.json"):
        prompt = load_workflow(path)
        classes[path.stem] = [prompt[i]["class_type"] for i in thumbnails.dax_chain(prompt)]
    assert classes["Wan2.1 text-to-video 1.3B (DAX)"] == ["DaxLoadWan", "DaxMultiGPUSampler"]
    assert classes["Wan2.1 text-to-video 14B, all accelerations (DAX)"] == [
        "DaxLoadWan",
        "DaxQuantizeLinear",
        "DaxSetAttentionBackend",
        "DaxTeacache",
        "DaxCompile",
        "DaxMultiGPUSampler",
    ]
    prompt = load_workflow()
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "DaxMultiGPUSampler")
    assert thumbnails.details(prompt[sampler]) == "steps 50, cfg 6, wan_unipc, gpus 1"
