"""Whole prompts through POST /prompt: the tiny workflow writes a video; a wrong model file fails cleanly."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dax_core.demo.comfy_server import ComfyServer, PromptFailed
from dax_core.demo.run import TINY_SETTINGS

pytestmark = pytest.mark.comfyui

RUN_TIMEOUT = 300.0


def _check_video(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, f"no video at {path}"
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == TINY_SETTINGS["length"]
    assert (frames[0].width, frames[0].height) == (TINY_SETTINGS["width"], TINY_SETTINGS["height"])


def _run_to_video(server: ComfyServer, prompt: dict[str, Any]) -> None:
    outputs = server.run(prompt, timeout=RUN_TIMEOUT)
    videos = [p for p in server.output_files(outputs) if p.suffix == ".mp4"]
    assert len(videos) == 1, f"expected one saved video, got {outputs}"
    _check_video(videos[0])


def test_tiny_workflow_writes_a_video(comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]) -> None:
    _run_to_video(comfy_server, tiny_prompt(seed=1))
    log = comfy_server.log_text()
    assert "clip missing" not in log, "the random T5-base lacks keys SA-T5 expects"
    assert "Missing VAE keys" not in log, "the random Wan VAE lacks keys ComfyUI's WanVAE expects"


@pytest.mark.parametrize(("kind", "seed"), [("vae", 3), ("garbage", 4)])
def test_wrong_model_file_fails_in_the_loader_then_server_recovers(
    comfy_server: ComfyServer,
    tiny_prompt: Callable[..., dict],
    wrong_dit_files: dict[str, str],
    kind: str,
    seed: int,
) -> None:
    wrong_file = wrong_dit_files[kind]
    with pytest.raises(PromptFailed) as failed:
        comfy_server.run(tiny_prompt(DaxLoadWan=wrong_file, seed=seed), timeout=RUN_TIMEOUT)
    assert failed.value.node_type == "DaxLoadWan"
    message = failed.value.exception_message
    assert wrong_file in message, message
    if kind == "vae":
        assert "vae" in message.lower(), message
    # the next good prompt (a new seed, so ComfyUI's cache cannot answer it) runs to a video
    _run_to_video(comfy_server, tiny_prompt(seed=seed))


def test_free_memory_releases_the_engine_and_the_next_prompt_rebuilds_it(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    _run_to_video(comfy_server, tiny_prompt(seed=11))
    released_before = comfy_server.log_text().count("released DAX engine")
    # the "Free model and node cache" button of the editor
    comfy_server._request("POST", "/free", {"unload_models": True, "free_memory": True})
    deadline = time.monotonic() + 60
    while comfy_server.log_text().count("released DAX engine") == released_before:
        assert time.monotonic() < deadline, "the engine was not released after /free\n" + comfy_server.log_tail()
        time.sleep(0.25)
    _run_to_video(comfy_server, tiny_prompt(seed=12))
