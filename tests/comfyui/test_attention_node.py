"""Set Attention Backend inside a real ComfyUI: listed, runs in a prompt, a missing backend is a node error."""

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
NODE_ID = "dax_attention"


def with_attention(prompt: dict[str, Any], backend: str, cross: str = "same") -> dict[str, Any]:
    """The prompt with a Set Attention Backend node between the loader and the sampler."""
    prompt = copy.deepcopy(prompt)
    loader_id = next(i for i, node in prompt.items() if node["class_type"] == "DaxLoadWan")
    prompt[NODE_ID] = {
        "class_type": "DaxSetAttentionBackend",
        "inputs": {
            "dax_model": [loader_id, 0],
            "backend": backend,
            "cross_attention": cross,
            "sage_qk_quant": "auto",
            "sage_pv_accum": "auto",
        },
    }
    node_of(prompt, "DaxMultiGPUSampler")["inputs"]["dax_model"] = [NODE_ID, 0]
    return prompt


def test_node_is_listed(comfy_server: ComfyServer) -> None:
    node = comfy_server.object_info().get("DaxSetAttentionBackend")
    assert node, f"Set Attention Backend missing from /object_info\n{comfy_server.log_tail()}"
    assert node["display_name"] == "Set Attention Backend (DAX)"
    assert node["output"] == ["DAX_MODEL"]
    inputs = node["input"]["required"]
    assert inputs["dax_model"][0] == "DAX_MODEL"
    assert inputs["backend"][0] == ["sdpa", "sdpa_cudnn", "sdpa_flash", "flash", "sage", "auto"]


def test_prompt_runs_with_the_chosen_backend_and_the_node_says_which(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    outputs = comfy_server.run(with_attention(tiny_prompt(seed=21), "auto", cross="sdpa"), timeout=RUN_TIMEOUT)
    summary = outputs[NODE_ID]["dax_summary"][0]
    assert "self-attention (auto): PyTorch SDPA" in summary and "cross-attention (sdpa)" in summary, summary
    assert [p for p in comfy_server.output_files(outputs) if p.suffix == ".mp4"]


@pytest.mark.skipif(installed("sageattention"), reason="sageattention is installed here")
def test_a_backend_that_is_not_installed_is_a_node_error(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    with pytest.raises(PromptFailed) as failed:
        comfy_server.run(with_attention(tiny_prompt(seed=22), "sage"), timeout=RUN_TIMEOUT)
    assert failed.value.node_type == "DaxSetAttentionBackend"
    message = failed.value.exception_message
    assert "sageattention is not installed" in message and "pip install sageattention==1.0.6" in message, message
