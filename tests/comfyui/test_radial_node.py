"""Radial Attention inside a real ComfyUI: listed, runs in a prompt with the sampler reporting each step's
density, and a kernel that is not installed is a node error with the install hint."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from dax_core.demo.comfy_server import ComfyServer, PromptFailed
from dax_core.demo.run import node_of
from tests.environment import installed

pytestmark = pytest.mark.comfyui

RUN_TIMEOUT = 300.0
NODE_ID = "dax_radial"


def with_radial(prompt: dict[str, Any], kernel: str, dense_steps: int = 1) -> dict[str, Any]:
    """The prompt with a Radial Attention node between the loader and the sampler."""
    prompt = copy.deepcopy(prompt)
    loader_id = next(i for i, node in prompt.items() if node["class_type"] == "DaxLoadWan")
    prompt[NODE_ID] = {
        "class_type": "DaxRadialAttention",
        "inputs": {
            "dax_model": [loader_id, 0],
            "dense_steps": dense_steps,
            "dense_layers": 1,
            "decay_factor": 0.2,
            "kernel": kernel,
        },
    }
    node_of(prompt, "DaxMultiGPUSampler")["inputs"]["dax_model"] = [NODE_ID, 0]
    return prompt


def test_node_is_listed(comfy_server: ComfyServer) -> None:
    node = comfy_server.object_info().get("DaxRadialAttention")
    assert node, f"Radial Attention missing from /object_info\n{comfy_server.log_tail()}"
    assert node["display_name"] == "Radial Attention (DAX)"
    assert node["output"] == ["DAX_MODEL"]
    inputs = node["input"]["required"]
    assert inputs["kernel"][0] == ["auto", "sparge", "flex", "reference"]
    assert inputs["dense_steps"][1]["default"] == 12 and inputs["decay_factor"][1]["default"] == 0.2


def test_prompt_runs_and_the_sampler_reports_each_steps_density(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    outputs = comfy_server.run(with_radial(tiny_prompt(seed=31), "auto"), timeout=RUN_TIMEOUT)
    assert "radial attention (auto): exact attention" in outputs[NODE_ID]["dax_summary"][0]
    sampler = next(i for i, o in outputs.items() if any("steps in" in line for line in o.get("dax_summary", [])))
    # the tiny video (2 frames of 4 x 4 patches) fits one 128-token block: every step computes it whole
    expected = "radial attention density per step: 1.00 x4 (1.00 of dense attention over the run)"
    assert outputs[sampler]["dax_summary"][-1] == expected, outputs[sampler]
    assert [p for p in comfy_server.output_files(outputs) if p.suffix == ".mp4"]


@pytest.mark.skipif(installed("spas_sage_attn"), reason="spas_sage_attn is installed here")
def test_a_kernel_that_is_not_installed_is_a_node_error(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    with pytest.raises(PromptFailed) as failed:
        comfy_server.run(with_radial(tiny_prompt(seed=32), "sparge"), timeout=RUN_TIMEOUT)
    assert failed.value.node_type == "DaxRadialAttention"
    message = failed.value.exception_message
    assert "spas_sage_attn is not installed" in message and "thu-ml/SpargeAttn" in message, message
