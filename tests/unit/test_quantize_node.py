"""The Quantize Linear node: a new recipe, keep-list and GPU checks that say what to change."""

from __future__ import annotations

import ast

import pytest
import torch

from dax_core.models.tiny import write_tiny_model
from dax_core.quant import QuantizationError
from dax_core.quant.config import QuantizeConfig
from dax_core.recipe import Recipe
from tests.environment import REPO
from tests.unit.node_modules import node_module as load_node_module


@pytest.fixture
def node_module(monkeypatch):
    """nodes/quantize.py on its own: it imports ComfyUI only to ask for the sampling device (stubbed here);
    the keep list is checked against the header of a real (tiny) checkpoint."""
    module = load_node_module("quantize")
    monkeypatch.setattr(module, "_sampling_device", lambda: torch.device("cpu"))
    return module


def test_node_is_registered_with_the_wan_default_keep_list(node_module):
    tree = ast.parse((REPO / "nodes" / "__init__.py").read_text())
    mappings = {
        node.targets[0].id: {
            ast.literal_eval(k): ast.unparse(v) for k, v in zip(node.value.keys, node.value.values, strict=True)
        }
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
    }
    assert mappings["NODE_CLASS_MAPPINGS"]["DaxQuantizeLinear"] == "DaxQuantizeLinear"
    assert mappings["NODE_DISPLAY_NAME_MAPPINGS"]["DaxQuantizeLinear"] == "'Quantize Linear (DAX)'"
    required = node_module.DaxQuantizeLinear.INPUT_TYPES()["required"]
    default = "text_embedding, time_embedding, time_projection, patch_embedding, head"
    assert required["keep_high_precision"][1]["default"] == default


@pytest.fixture
def weights(tmp_path) -> str:
    return str(write_tiny_model(tmp_path / "wan.safetensors", dim=128, num_layers=3, ffn_dim=256))


def test_node_returns_a_new_recipe_with_the_quantize_config(node_module, weights):
    recipe = Recipe(weights)
    (out,) = node_module.DaxQuantizeLinear().patch(recipe, "int8", "per-tensor", "condition_embedder, proj_out")
    assert recipe.accelerations == ()
    assert out.acceleration("quantize") == QuantizeConfig(
        dtype="int8", granularity="per-tensor", keep=("condition_embedder", "proj_out")
    )


def test_a_keep_entry_matching_no_module_lists_the_closest_names(node_module, weights):
    with pytest.raises(QuantizationError, match=r"keep list: 'heads' names no module .*closest: head"):
        node_module.DaxQuantizeLinear().patch(Recipe(weights), "fp8", "per-tensor", "condition_embedder, heads")


def test_fp8_on_an_ampere_gpu_is_a_node_error_suggesting_int8(node_module, weights, monkeypatch):
    monkeypatch.setattr(node_module, "_sampling_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    node = node_module.DaxQuantizeLinear()
    with pytest.raises(QuantizationError, match=r"NVIDIA A100-SXM4-80GB is 8\.0\. Choose int8"):
        node.patch(Recipe(weights), "fp8", "per-token-per-channel", "condition_embedder, proj_out")
    (out,) = node.patch(Recipe(weights), "int8", "per-token-per-channel", "condition_embedder, proj_out")
    assert out.acceleration("quantize").dtype == "int8"
