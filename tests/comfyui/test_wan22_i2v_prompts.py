"""The Wan2.2 I2V A14B workflow through POST /prompt on the demo's tiny experts: a CLIPVisionEncode output given to
it is not used (as ComfyUI's own model does) and the sampler's summary says so; a Wan2.1 I2V file chosen as an I2V
A14B expert, and a run without a start image, are node errors saying what to change. (The shipped workflow as it
is runs in test_run_prompt; its numerics against native ComfyUI are the unit tier's, tests/unit/test_wan22_i2v.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dax_core.demo.comfy_server import ComfyServer, PromptFailed
from dax_core.demo.run import API_WORKFLOWS

pytestmark = pytest.mark.comfyui

WORKFLOW = API_WORKFLOWS / "Wan2.2 image-to-video A14B, two experts (DAX).json"
RUN_TIMEOUT = 300.0
STEPS = 4


def _node(prompt: dict[str, Any], class_type: str) -> dict[str, Any]:
    return next(node for node in prompt.values() if node["class_type"] == class_type)


def _image_id(prompt: dict[str, Any]) -> str:
    return next(node_id for node_id, node in prompt.items() if node["class_type"] == "LoadImage")


def test_clip_vision_given_to_the_experts_is_ignored_and_the_summary_says_so(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict], demo_models_of_every_kind: dict
) -> None:
    files = demo_models_of_every_kind["wan2.2-i2v-a14b"]
    prompt = tiny_prompt(workflow=WORKFLOW, seed=41, steps=STEPS)
    prompt["clip_vision"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": files.clip_vision.name}}
    prompt["clip_encode"] = {"class_type": "CLIPVisionEncode",
                             "inputs": {"clip_vision": ["clip_vision", 0], "image": [_image_id(prompt), 0],
                                        "crop": "none"}}  # fmt: skip
    _node(prompt, "WanImageToVideo")["inputs"]["clip_vision_output"] = ["clip_encode", 0]
    outputs = comfy_server.run(prompt, timeout=RUN_TIMEOUT)
    assert [p for p in comfy_server.output_files(outputs) if p.suffix == ".mp4"], outputs
    sampler = next(k for k, node in prompt.items() if node["class_type"] == "DaxMultiGPUSampler")
    summary = "\n".join(outputs[sampler]["dax_summary"])
    assert "Wan2.2 A14B experts (boundary 0.9)" in summary and "clip_vision_output ignored" in summary, summary


def test_a_wan21_i2v_file_as_an_i2v_a14b_expert_is_a_load_error(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict], demo_models_of_every_kind: dict
) -> None:
    wan21_i2v = dict(demo_models_of_every_kind["wan2.1"].image_models)["i2v"]
    prompt = tiny_prompt(workflow=WORKFLOW, seed=42, steps=STEPS)
    _node(prompt, "DaxLoadWan")["inputs"]["model_name"] = wan21_i2v.name
    with pytest.raises(PromptFailed) as failed:
        comfy_server.run(prompt, timeout=RUN_TIMEOUT)
    assert failed.value.node_type == "DaxLoadWan"
    assert "i2v model with CLIP-vision features" in failed.value.exception_message
    assert wan21_i2v.name in failed.value.exception_message


def test_no_start_image_is_a_sampler_error_saying_what_to_connect(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    prompt = tiny_prompt(workflow=WORKFLOW, seed=43, steps=STEPS)
    del _node(prompt, "WanImageToVideo")["inputs"]["start_image"]
    del prompt[_image_id(prompt)]
    with pytest.raises(PromptFailed) as failed:
        comfy_server.run(prompt, timeout=RUN_TIMEOUT)
    assert failed.value.node_type == "DaxMultiGPUSampler"
    assert "needs the start image" in failed.value.exception_message
    assert "no CLIP vision needed" in failed.value.exception_message
