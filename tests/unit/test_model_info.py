"""The model is resolved once, at Load Wan DAX: what reads the recipe afterwards never reads the weights' headers."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import dax_core.models.loading as loading
from dax_core.models.info import ModelInfo
from dax_core.models.spec import WanSpec
from dax_core.models.tiny import write_tiny_model
from dax_core.recipe import Recipe
from dax_core.runtime.model_info import recipe_model
from tests.unit.node_modules import node_module

SPEC = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=768)


@pytest.fixture
def no_header_reads(monkeypatch):
    def refuse(path):
        raise AssertionError(f"read the headers of {path} again")

    for module in ("dax_core.models.loading", "dax_core.runtime.model_info"):
        monkeypatch.setattr(f"{module}.inspect_weights", refuse)


def test_load_wan_dax_puts_the_resolved_model_in_the_recipe(tmp_path, monkeypatch):
    path = write_tiny_model(tmp_path / "tiny.safetensors")
    model_files = types.ModuleType("dax_pack_nodes.model_files")  # the ComfyUI folder lookup, stubbed
    model_files.list_models = lambda: ["tiny.safetensors"]
    model_files.resolve_model = lambda name: str(path)
    monkeypatch.setitem(sys.modules, "dax_pack_nodes.model_files", model_files)
    load_wan = node_module("load_wan")
    (recipe,) = load_wan.DaxLoadWan().load("tiny.safetensors", "default", "bf16")
    assert recipe.model == loading.inspect_weights(path).model == ModelInfo(SPEC, SPEC.name, "wan2.1")


def test_nodes_and_the_group_read_the_recipes_model(no_header_reads):
    model = ModelInfo(SPEC, "a-tiny-model")
    recipe = Recipe("/nowhere/model.safetensors", model=model)  # no such file: any header read would fail
    assert recipe_model(recipe) is model
    quantize = node_module("quantize")
    quantize._sampling_device = lambda: torch.device("cpu")
    keep = "time_embedding, time_projection, head"
    (patched,) = quantize.DaxQuantizeLinear().patch(recipe, "int8", "per-token-per-channel", keep)
    assert patched.model is model and patched.acceleration("quantize") is not None


def test_a_recipe_made_without_a_model_reads_the_headers(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.safetensors")
    assert recipe_model(Recipe(str(path))).spec == SPEC


def test_an_engine_refuses_weights_that_are_no_longer_the_model_the_recipe_carries(tmp_path):
    from dax_core.models.tiny import tiny_spec
    from dax_core.runtime.engine import WanEngine

    path = write_tiny_model(tmp_path / "model.safetensors")  # now a T2V file; the recipe was made for an I2V one
    i2v = tiny_spec("i2v")
    recipe = Recipe(str(path), compute_dtype="fp32", model=ModelInfo(i2v, i2v.name))
    with pytest.raises(ValueError, match="the file changed since Load Wan DAX read it"):
        WanEngine.build(recipe, "cpu")
