"""What a user sees in ComfyUI's own front end (headless Chromium): the pack's templates open with their thumbnails,
and a shipped workflow run from the canvas shows the sampler's live status, its summary and a latent preview.

The server is ComfyUI on 127.0.0.1 with this pack, the tiny models under the file names the shipped workflows
load (so they open without a missing-model dialog) and ``--preview-method auto``.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dax_core.demo.comfy_server import ComfyServer
from dax_core.demo.run import INPUT_FOLDER, LOADERS, TINY_SETTINGS, WORKFLOWS, ModelFiles
from tests.comfyui import front_end
from tests.comfyui.conftest import placeholders

pytestmark = pytest.mark.comfyui

TEMPLATES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
RUN_TEMPLATE = "Wan2.1 text-to-video 1.3B (DAX)"
# enough steps that the live status is on screen for many animation frames (a tiny step takes 0.1-0.5 s here)
RUN_STEPS = 20
RUN_TIMEOUT_S = 300.0
SCREENSHOT_ENV = "DAX_SCREENSHOT"
SCALE = 0.8  # the whole sampler node (1060 high, and its title) fits in the window


@pytest.fixture(scope="module")
def executable() -> str:
    path = front_end.chromium()
    if path is None:
        pytest.skip("Debian's chromium is not installed (.ci/setup installs it with apt-get where apt-get works)")
    return path


@pytest.fixture(scope="module")
def ui_server(
    comfyui_dir: Path, demo_models_of_every_kind: dict[str, ModelFiles], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComfyServer]:
    base = tmp_path_factory.mktemp("comfyui-front-end")
    by_folder: dict[str, Path] = {}  # the Wan2.1 files (the template run from the canvas), then what only others have
    for files in demo_models_of_every_kind.values():
        for loader, path in files.by_loader().items():
            by_folder.setdefault(LOADERS[loader][1], path)
    for folder, name in placeholders():
        target = (base / INPUT_FOLDER if folder == INPUT_FOLDER else base / "models" / folder) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(by_folder[folder])
    with ComfyServer(comfyui_dir, base, extra_args=["--preview-method", "auto"], start_timeout=120.0) as server:
        yield server


@pytest.fixture
def page(ui_server: ComfyServer, executable: str) -> Iterator[Any]:
    with front_end.front_end(ui_server.url, executable) as page:
        yield page


# The longest texts a run on GPUs shows (a 2-GPU H200 run of the 14B template: the kernel labels of
# dax_core/attention/sage.py and sdpa_cudnn.py, every acceleration on): the templates must show them whole.
GPU_ATTENTION = (
    "self-attention (auto): SageAttention2 (sm90) sageattn_qk_int8_pv_fp8_cuda_sm90 (int8 Q·K per_thread, fp8 P·V, "
    "fp32+fp32 accumulation)\ncross-attention (same): PyTorch SDPA pinned to cuDNN attention (cuDNN 91900)"
)
GPU_SUMMARY = "\n".join(
    [
        "50 steps in 612.4 s (first step 38.2 s, compilation included, then 11.72 s/step)",
        "TeaCache skipped cond 24/50, uncond 24/50 steps (~1.92x fewer transformer passes)",
        "self-attention: SageAttention2 (sm90) sageattn_qk_int8_pv_fp8_cuda_sm90 (int8 Q·K per_thread, fp8 P·V, "
        "fp32+fp32 accumulation); cross-attention: PyTorch SDPA pinned to cuDNN attention (cuDNN 91900)",
        "linears: 400 of 406 in fp8 per-token-per-channel, the others in bfloat16",
        "compiled: inductor, mode default, static shapes",
        "peak GPU memory: 41.3, 41.2 GiB (per GPU)",
        "2 GPUs: ulysses=2, overlap on · NVIDIA H200 · warm worker group reused",
    ]
)


def _node_types(template: str) -> list[str]:
    return [node["type"] for node in json.loads((WORKFLOWS / f"{template}.json").read_text(encoding="utf-8"))["nodes"]]


def test_every_template_opens_into_its_graph_with_a_thumbnail_the_server_serves(page: Any, ui_server: ComfyServer):
    listed = front_end.open_template_browser(page)
    assert sorted(listed) == TEMPLATES  # UI-format workflows only: no API-format twin among them
    for template in listed:
        url = f"{ui_server.url}/api/workflow_templates/{front_end.PACK_CATEGORY}/{urllib.parse.quote(template)}.jpg"
        served = page.request.get(url)
        assert served.status == 200 and served.headers["content-type"] == "image/jpeg", (url, served.status)
        assert front_end.card_thumbnail(page, template) == {"width": 512, "height": 512}
        nodes = front_end.open_template(page, template, _node_types(template))
        assert nodes and not front_end.overlapping_nodes(nodes)
        assert not [e for e in page.errors if "valid version" in e or "Zod" in e], page.errors
        # the texts of a GPU run, drawn by the front end: whole, and no node grows over another for them
        texts = {front_end.SAMPLER: GPU_SUMMARY, "DaxSetAttentionBackend": GPU_ATTENTION}
        for node_type, text in texts.items():
            if node_type not in _node_types(template):
                continue
            front_end.show_text(page, node_type, text)
            front_end.show_node(page, node_type, scale=SCALE)  # a text is drawn while its node is on screen
            page.wait_for_timeout(500)  # on the next frames
            (box,) = [b for b in front_end.text_boxes(page) if b["text"].startswith(text[:40])]
            assert 0 < box["client"] and box["scroll"] <= box["client"] + 1, f"{node_type}: the text is cut: {box}"
        assert not front_end.overlapping_nodes(front_end.graph_nodes(page)), "a node grew over another"
        if template != listed[-1]:
            assert front_end.open_template_browser(page) == listed


def test_a_run_from_the_canvas_shows_live_status_then_the_summary_and_a_preview(
    page: Any, ui_server: ComfyServer, tmp_path: Path
):
    front_end.open_template_browser(page)
    front_end.open_template(page, RUN_TEMPLATE, _node_types(RUN_TEMPLATE))
    sizes = {key: TINY_SETTINGS[key] for key in ("width", "height", "length")}
    front_end.set_widgets(page, {**sizes, "steps": RUN_STEPS})
    front_end.show_node(page, front_end.SAMPLER, scale=SCALE)
    front_end.record_status(page)
    page.get_by_role("button", name="Run", exact=True).click()

    deadline = time.monotonic() + RUN_TIMEOUT_S
    summary = re.compile(rf"^{RUN_STEPS} steps in [\d.]+ s")
    while not any(s["shown"] and summary.match(s["shown"]) for s in front_end.recorded_status(page)):
        assert time.monotonic() < deadline, f"no summary on screen; the page logged {page.errors[-5:]}\n" + (
            ui_server.log_tail()
        )
        time.sleep(0.25)
    seen = front_end.recorded_status(page)
    while not ui_server.history():  # then the video is decoded and saved
        assert time.monotonic() < deadline, ui_server.log_tail()
        time.sleep(0.25)
    (entry,) = ui_server.history().values()
    assert entry["status"]["status_str"] == "success", entry["status"]

    live = [s for s in seen if s["shown"] and re.match(rf"^step (\d+) / {RUN_STEPS} · ", s["shown"])]
    assert live, f"the live status never showed on screen: {seen}"
    steps = [int(re.match(r"^step (\d+)", s["shown"])[1]) for s in live]
    assert steps == sorted(steps) and min(steps) < RUN_STEPS, steps  # drawn while it ran, in order
    assert any(re.search(r"· about \d+ (s|min \d+ s) left", s["shown"]) for s in live), live
    assert all(s["shown"] == s["value"] for s in seen if s["shown"]), "the screen shows what the widget holds"
    # the preview: none before the run, then ComfyUI's picture of a step drawn on the node (its image decodes
    # asynchronously, so on a fast machine it may be complete only once the last steps' texts are drawn)
    assert seen[0]["preview"] == 0 and any(s["preview"] > 0 for s in seen), f"no preview image: {seen}"

    final = seen[-1]["shown"].splitlines()
    assert final[0].startswith(f"{RUN_STEPS} steps in") and "then" in final[0]
    assert final[1].startswith("attention: PyTorch SDPA") and final[-1] == "CPU · model loaded", final
    box = front_end.status_box(page)
    assert box["scroll"] <= box["client"] + 1, f"the summary is cut: {box}"  # every line visible
    assert not front_end.overlapping_nodes(front_end.graph_nodes(page)), "a node grew over another"
    page.wait_for_function("document.querySelector('.comfy-img-preview video')?.readyState >= 2", timeout=30_000)
    # the README's picture of a finished run (tools/readme_screenshot.py sets where it goes)
    picture = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "finished_run.jpg")
    shown = [front_end.SAMPLER, "VAEDecode", "CreateVideo", "SaveVideo"]
    page.screenshot(path=str(picture), type="jpeg", quality=75, clip=front_end.screen_box(page, shown))
