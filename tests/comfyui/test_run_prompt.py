"""Whole prompts through POST /prompt: every shipped workflow, on the tiny models, writes a video with each of its
acceleration nodes at work; a wrong model file fails cleanly."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dax_core.demo.comfy_server import ComfyServer, PromptFailed
from dax_core.demo.run import TINY_SETTINGS, shipped_workflows

pytestmark = pytest.mark.comfyui

RUN_TIMEOUT = 300.0
# TeaCache in e0 mode always runs the first 5 steps and the last: 10 steps leave 4 it may skip.
LEVER_STEPS = 10


def _check_video(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, f"no video at {path}"
    import av  # a test dependency: missing, it is a failure, not a skip

    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == TINY_SETTINGS["length"]
    assert (frames[0].width, frames[0].height) == (TINY_SETTINGS["width"], TINY_SETTINGS["height"])


def _run_to_video(server: ComfyServer, prompt: dict[str, Any]) -> dict[str, Any]:
    outputs = server.run(prompt, timeout=RUN_TIMEOUT)
    videos = [p for p in server.output_files(outputs) if p.suffix == ".mp4"]
    assert len(videos) == 1, f"expected one saved video, got {outputs}"
    _check_video(videos[0])
    return outputs


def _check_levers(prompt: dict[str, Any], outputs: dict[str, Any], log: str) -> None:
    """Each acceleration node of ``prompt`` left its mark on the run (``log``: ComfyUI's log of this prompt)."""
    by_type = {node["class_type"]: node_id for node_id, node in prompt.items()}
    levers = {t for t in by_type if t.startswith("Dax")} - {"DaxLoadWan", "DaxMultiGPUSampler"}
    assert levers <= {"DaxLoadLora", "DaxQuantizeLinear", "DaxSetAttentionBackend", "DaxTeacache", "DaxCompile"}, (
        f"add a check for {levers} here"
    )
    if prompt[by_type["DaxLoadWan"]]["inputs"].get("low_noise_model_name", "none") != "none":
        summary = "\n".join(outputs[by_type["DaxMultiGPUSampler"]]["dax_summary"])
        experts = re.search(r"high-noise expert (\d+), low-noise expert (\d+) steps", summary)
        assert experts and int(experts[1]) > 0 and int(experts[2]) > 0, summary  # both experts ran
    if "DaxLoadLora" in by_type:
        inputs = prompt[by_type["DaxLoadLora"]]["inputs"]
        summary = "\n".join(outputs[by_type["DaxMultiGPUSampler"]]["dax_summary"])
        lora = f"LoRA {re.escape(inputs['lora_name'])} at strength {inputs['strength']:g}"
        merged = re.search(rf"{lora}: (\d+) parameters changed", summary)
        assert merged and int(merged[1]) > 0 and "match no layer" not in summary, summary
    if "DaxQuantizeLinear" in by_type:
        inputs = prompt[by_type["DaxQuantizeLinear"]]["inputs"]
        done = re.search(rf"quantized (\d+) linear layers \[{inputs['dtype']} {inputs['granularity']}", log)
        assert done and int(done[1]) > 0, log
    if "DaxSetAttentionBackend" in by_type:
        summary = outputs[by_type["DaxSetAttentionBackend"]]["dax_summary"][0]
        assert "attention (auto): PyTorch SDPA" in summary, summary  # on CPU, auto is SDPA
    if "DaxTeacache" in by_type:
        summary = "\n".join(outputs[by_type["DaxMultiGPUSampler"]]["dax_summary"])
        skips = re.search(rf"TeaCache skipped cond (\d+)/{LEVER_STEPS}, uncond (\d+)/{LEVER_STEPS} steps", summary)
        assert skips and int(skips[1]) > 0 and int(skips[2]) > 0, summary
    if "DaxCompile" in by_type:
        backend = prompt[by_type["DaxCompile"]]["inputs"]["backend"]
        assert re.search(rf"\d+ transformer blocks compile on first use \({backend}", log), log
        assert "compiling the transformer block for batch" in log, log
        assert "first step, compilation included" in log, log


@pytest.mark.parametrize("workflow", shipped_workflows(), ids=lambda path: path.stem)
def test_tiny_workflow_writes_a_video(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict], workflow: Path
) -> None:
    # The whole graph as shipped, on the tiny models at the tiny size. On CPU: fp8 quantization takes the PyTorch
    # path, attention auto picks SDPA, and Compile keeps inductor (its C++ kernels build in 10-20 s on two cores).
    prompt = tiny_prompt(workflow=workflow, seed=1, steps=LEVER_STEPS)
    log_start = len(comfy_server.log_text())
    outputs = _run_to_video(comfy_server, prompt)
    log = comfy_server.log_text()
    assert "clip missing" not in log, "the random T5-base lacks keys SA-T5 expects"
    assert "Missing VAE keys" not in log, "the random Wan VAE lacks keys ComfyUI's WanVAE expects"
    assert "missing clip vision" not in log, "the random CLIP ViT-H lacks keys ComfyUI's vision model expects"
    _check_levers(prompt, outputs, log[log_start:])


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


def test_a_new_teacache_threshold_reuses_the_loaded_model(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    workflow = next(w for w in shipped_workflows() if "DaxTeacache" in w.read_text())
    prompt = tiny_prompt(workflow=workflow, seed=21, steps=LEVER_STEPS)
    _run_to_video(comfy_server, prompt)
    built_before = comfy_server.log_text().count("built custom-")
    teacache = next(node for node in prompt.values() if node["class_type"] == "DaxTeacache")
    teacache["inputs"]["threshold"] = round(teacache["inputs"]["threshold"] / 2, 3)
    start = len(comfy_server.log_text())
    _run_to_video(comfy_server, prompt)
    log = comfy_server.log_text()
    assert log.count("built custom-") == built_before, "a new threshold reloaded the model\n" + log[start:]
    assert f"threshold={teacache['inputs']['threshold']}" in log[start:], log[start:]


def _lora_workflow() -> Path:
    return next(w for w in shipped_workflows() if "DaxLoadLora" in w.read_text())


def test_a_new_lora_strength_merges_into_the_loaded_model(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    prompt = tiny_prompt(workflow=_lora_workflow(), seed=31)
    _run_to_video(comfy_server, prompt)
    built_before = comfy_server.log_text().count("built custom-")
    lora = next(node for node in prompt.values() if node["class_type"] == "DaxLoadLora")
    lora["inputs"]["strength"] = 0.5
    start = len(comfy_server.log_text())
    outputs = _run_to_video(comfy_server, prompt)
    log = comfy_server.log_text()
    assert log.count("built custom-") == built_before, "a new strength reloaded the model\n" + log[start:]
    assert "merged 1 LoRA(s) again" in log[start:], log[start:]
    sampler = next(k for k, node in prompt.items() if node["class_type"] == "DaxMultiGPUSampler")
    assert any(" at strength 0.5: " in line for line in outputs[sampler]["dax_summary"]), outputs[sampler]


def test_a_lora_for_another_model_family_fails_in_its_node(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict], wrong_lora_file: str
) -> None:
    with pytest.raises(PromptFailed) as failed:
        comfy_server.run(tiny_prompt(workflow=_lora_workflow(), DaxLoadLora=wrong_lora_file, seed=32), RUN_TIMEOUT)
    assert failed.value.node_type == "DaxLoadLora"
    assert wrong_lora_file in failed.value.exception_message
    assert "another model family" in failed.value.exception_message
