"""The README's main job, ``python -m dax_core demo``, end to end (it starts its own ComfyUI)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from dax_core.demo.run import API_WORKFLOWS, WORKFLOWS, ModelFiles, configure, load_workflow, main

pytestmark = pytest.mark.comfyui


def test_demo_runs_the_shipped_workflow_on_tiny_models_into_a_folder_of_its_own(
    comfyui_dir: Path,
    demo_models: ModelFiles,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="dax_core.demo")
    monkeypatch.setenv("DAX_CACHE", str(tmp_path))  # the cache, which holds the run folders
    for path in demo_models.by_loader().values():  # and the tiny models, found there under their names
        (tmp_path / path.name).symlink_to(path)
    assert main(["--comfyui", str(comfyui_dir), "--steps", "2"]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}-\d+", folder.name), folder
    videos = sorted(folder.rglob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    assert f"video written to {videos[0]}" in caplog.text
    assert "running at 64 x 64, 5 frames, 2 steps" in caplog.text
    # the sampler's own summary, and ComfyUI's log, kept in the run's folder
    assert re.search(r"sampler: 2 steps in [\d.]+ s \(first step", caplog.text), caplog.text
    assert f"ComfyUI's log: {folder / 'comfyui.log'}" in caplog.text
    assert "Prompt executed" in (folder / "comfyui.log").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--width", "100", "--width 100 is not a multiple of 16: use 96 or 112"),
        ("--height", "8", "--height 8 is not a multiple of 16: use 16"),
        ("--length", "6", "--length 6 is not 4k+1 frames: use 5 or 9"),
    ],
)
def test_demo_refuses_a_size_the_latent_node_would_round(
    comfyui_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, flag: str, value: str, message: str
) -> None:
    assert main(["--comfyui", str(comfyui_dir), "--output-dir", str(tmp_path), flag, value]) == 1
    assert f"demo failed: {message}" in caplog.text
    assert not any(tmp_path.iterdir()), "refused before anything started"


def test_demo_fails_clearly_on_a_wrong_model(
    comfyui_dir: Path, demo_models: ModelFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "not_a_dit.safetensors"
    wrong.write_bytes(b"garbage" * 64)
    args = ["--comfyui", str(comfyui_dir), "--output-dir", str(tmp_path / "out")]
    args += ["--model", str(wrong), "--text-encoder", str(demo_models.text_encoder), "--vae", str(demo_models.vae)]
    assert main(args) == 1
    assert "demo failed: node" in caplog.text and "(DaxLoadWan) failed" in caplog.text
    assert "not_a_dit.safetensors" in caplog.text
    kept = tmp_path / "out" / "comfyui.log"  # the failed run's log stays, and the demo says where
    assert f"ComfyUI's log: {kept}" in caplog.text and "not_a_dit.safetensors" in kept.read_text(encoding="utf-8")


def test_demo_needs_all_three_weights(comfyui_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert main(["--comfyui", str(comfyui_dir), "--model", str(tmp_path / "dit.safetensors")]) == 2
    assert "missing --text-encoder, --vae" in caplog.text


def test_demo_needs_the_clip_vision_model_and_an_image_for_an_image_workflow(
    comfyui_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = [arg for flag in ("--model", "--text-encoder", "--vae") for arg in (flag, str(tmp_path / "x"))]
    workflow = API_WORKFLOWS / "Wan2.1 image-to-video 14B 480p (DAX).json"
    assert main(["--comfyui", str(comfyui_dir), "--workflow", str(workflow), *weights]) == 1
    assert "encodes its image with CLIP vision: pass --clip-vision FILE" in caplog.text
    clip = ["--clip-vision", str(tmp_path / "clip")]
    assert main(["--comfyui", str(comfyui_dir), "--workflow", str(workflow), *weights, *clip]) == 1
    assert "starts from an image: pass it with --image FILE" in caplog.text


def test_demo_needs_both_experts_and_an_image_but_no_clip_vision_for_wan22_i2v(
    comfyui_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = [arg for flag in ("--model", "--text-encoder", "--vae") for arg in (flag, str(tmp_path / "x"))]
    workflow = API_WORKFLOWS / "Wan2.2 image-to-video A14B, two experts (DAX).json"
    assert main(["--comfyui", str(comfyui_dir), "--workflow", str(workflow), *weights]) == 1
    assert "has two experts: pass the low-noise one with --low-noise-model" in caplog.text
    low = ["--low-noise-model", str(tmp_path / "low")]
    assert main(["--comfyui", str(comfyui_dir), "--workflow", str(workflow), *weights, *low]) == 1
    assert "starts from an image: pass it with --image FILE" in caplog.text
    assert "--clip-vision" not in caplog.text


def test_configure_changes_only_what_it_is_given() -> None:
    workflow = load_workflow()
    names = {"DaxLoadWan": "dit.safetensors", "CLIPLoader": "te.safetensors", "VAELoader": "vae.safetensors"}
    prompt = configure(workflow, names, {"width": 64, "steps": 3, "prompt": "a red fox", "seed": None})
    changed = {
        (node_id, key): value
        for node_id, node in prompt.items()
        for key, value in node["inputs"].items()
        if workflow[node_id]["inputs"][key] != value
    }
    by_type = {node["class_type"]: node_id for node_id, node in prompt.items()}
    positive_id = prompt[by_type["DaxMultiGPUSampler"]]["inputs"]["positive"][0]
    assert changed == {
        (by_type["DaxLoadWan"], "model_name"): "dit.safetensors",
        (by_type["CLIPLoader"], "clip_name"): "te.safetensors",
        (by_type["VAELoader"], "vae_name"): "vae.safetensors",
        (by_type["EmptyHunyuanLatentVideo"], "width"): 64,
        (by_type["DaxMultiGPUSampler"], "steps"): 3,
        (positive_id, "text"): "a red fox",
    }
    with pytest.raises(ValueError, match="unknown workflow setting 'fps'"):
        configure(workflow, {}, {"fps": 8})


def test_configure_pins_the_step_cache_model_of_every_step_cache_node_and_needs_none() -> None:
    fast = load_workflow(API_WORKFLOWS / "Wan2.1 text-to-video 14B, all accelerations (DAX).json")
    prompt = configure(fast, {}, {"step_cache_model": "wan2.1-t2v-1.3b"})
    changed = {
        (node["class_type"], key): value
        for node_id, node in prompt.items()
        for key, value in node["inputs"].items()
        if fast[node_id]["inputs"][key] != value
    }
    assert changed == {("DaxTeacache", "coefficients"): "wan2.1-t2v-1.3b"}
    plain = load_workflow()
    assert configure(plain, {}, {"step_cache_model": "wan2.1-t2v-1.3b"}) == plain  # no step cache: nothing to pin


def test_a_ui_format_workflow_is_run_through_its_api_twin(tmp_path: Path) -> None:
    for twin in API_WORKFLOWS.glob("*.json"):
        assert load_workflow(WORKFLOWS / twin.name) == load_workflow(twin)
    lone = tmp_path / "mine.json"
    lone.write_text((WORKFLOWS / twin.name).read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"UI-format workflow and has no API-format twin at .*api/mine\.json"):
        load_workflow(lone)
