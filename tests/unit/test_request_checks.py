"""Requests and recipes checked against the model and the parallel layout before any rank sees them: the errors
say what to change, and they are the words the ranks would use."""

from __future__ import annotations

import dataclasses

import psutil
import pytest
import torch

from dax_core.accelerations import BuildEnv
from dax_core.cache.config import MagcacheConfig, TeacacheConfig
from dax_core.models.tiny import write_tiny_model
from dax_core.parallel.config import ParallelConfig, step_cache_refused
from dax_core.quant import QuantizationError
from dax_core.quant.config import QuantizeConfig
from dax_core.recipe import Recipe
from dax_core.runtime.distributed import check_recipe_layout, parallel_layout
from dax_core.runtime.engine import check_request
from dax_core.runtime.group import GroupConfig, WorkerGroup
from tests.unit.node_modules import node_module
from tests.unit.tiny_wan import TINY, tiny_engine, tiny_model, tiny_request

ULYSSES = ParallelConfig(2, ulysses=2)
CFG_PARALLEL = ParallelConfig(2, cfg_parallel=True)


def _with(req, **changes):
    return dataclasses.replace(req, **changes)


def _latent(height: int, width: int, channels: int = 16) -> torch.Tensor:
    """ComfyUI's empty Wan latent for a video of ``height`` x ``width`` pixels."""
    return torch.zeros(1, channels, 3, height // 8, width // 8)


@pytest.mark.parametrize(
    ("height", "width", "message"),
    [
        (64, 840, "width 840 is not a multiple of 16: use 832 or 848"),
        (72, 64, "height 72 is not a multiple of 16: use 64 or 80"),
        (8, 64, "height 8 is not a multiple of 16: use 16"),
    ],
)
def test_a_size_off_the_patch_grid_names_the_sizes_that_work(height, width, message):
    with pytest.raises(ValueError, match=message):
        check_request(_with(tiny_request(), latent=_latent(height, width)), TINY)


def test_a_latent_of_other_channels_is_refused():
    with pytest.raises(ValueError, match=r"expected a video latent \[B, 16, frames, height, width\], got shape"):
        check_request(_with(tiny_request(), latent=_latent(64, 64, channels=4)), TINY)


def test_text_of_the_wrong_width_names_the_width_the_model_takes():
    req = tiny_request()
    wide = torch.zeros(1, 7, 4096)
    with pytest.raises(ValueError, match=r"the positive text embedding must be \[B, tokens, 32\], got \(1, 7, 4096\)"):
        check_request(_with(req, positive=wide), TINY)
    with pytest.raises(ValueError, match=r"the negative text embedding .* this model takes 32-wide text"):
        check_request(_with(req, negative=wide), TINY)
    check_request(_with(req, negative=wide, cfg=1.0), TINY)  # cfg 1 never runs the negative branch


def test_cfg_parallel_needs_both_branches_in_one_forward():
    equal = tiny_request(negative_tokens=7)
    check_request(equal, TINY, CFG_PARALLEL)
    with pytest.raises(ValueError, match="but cfg is 1, which runs the positive branch alone: set cfg above 1"):
        check_request(_with(equal, cfg=1.0), TINY, CFG_PARALLEL)
    with pytest.raises(ValueError, match=r"the positive one has 7 tokens and the negative one 9: .* shorten"):
        check_request(tiny_request(negative_tokens=9), TINY, CFG_PARALLEL)
    # without CFG-parallel neither matters; with an even batch each half of the GPUs takes half of its rows
    check_request(tiny_request(negative_tokens=9, cfg=1.0), TINY, ULYSSES)
    two = _with(tiny_request(cfg=1.0), latent=torch.zeros(2, 16, 3, 8, 8))
    check_request(two, TINY, CFG_PARALLEL)


def test_the_engine_refuses_a_bad_request_before_its_first_step():
    engine = tiny_engine()
    steps: list[int] = []
    with pytest.raises(ValueError, match="width 840 is not a multiple of 16"):
        engine.sample(_with(tiny_request(), latent=_latent(64, 840)), on_step=lambda i, n, x: steps.append(i))
    with pytest.raises(ValueError, match="the positive text embedding must be"):  # named, unlike in the forward
        engine.sample(_with(tiny_request(), positive=torch.zeros(1, 7, 4096)), on_step=lambda i, n, x: steps.append(i))
    assert steps == []


def test_the_model_forward_refuses_with_the_same_words():
    x = _latent(64, 840)
    with pytest.raises(ValueError, match="width 840 is not a multiple of 16: use 832 or 848"):
        tiny_model()(x, torch.zeros(1), torch.zeros(1, 7, TINY.text_dim))


TEACACHE = TeacacheConfig(model="wan2.1-t2v-14b")
PER_TENSOR = QuantizeConfig(dtype="int8", granularity="per-tensor")


@pytest.mark.parametrize("cache", [TEACACHE, MagcacheConfig(model="wan2.1-t2v-14b")])
def test_a_step_cache_with_cfg_parallel_is_refused_from_the_recipe(cache):
    recipe = Recipe("w.safetensors").with_acceleration(cache)
    with pytest.raises(ValueError) as refused:
        check_recipe_layout(recipe, CFG_PARALLEL)
    assert str(refused.value) == step_cache_refused()  # what enable_sequence_parallel says on every rank
    check_recipe_layout(recipe, ULYSSES)  # split tokens: every rank holds both branches


def test_per_tensor_quantization_on_split_tokens_is_refused_from_the_recipe():
    recipe = Recipe("w.safetensors").with_acceleration(PER_TENSOR)
    with pytest.raises(QuantizationError) as refused:
        check_recipe_layout(recipe, ULYSSES)
    with pytest.raises(QuantizationError) as on_a_rank:  # what a rank's build says, after loading the weights
        PER_TENSOR.apply(tiny_model(), BuildEnv(torch.device("cpu"), world_size=2))
    assert str(refused.value) == str(on_a_rank.value)
    assert "Quantize Linear (int8, per-tensor) on 2 GPUs" in str(refused.value)
    check_recipe_layout(recipe, None)
    check_recipe_layout(recipe, ParallelConfig(1))
    check_recipe_layout(Recipe("w.safetensors").with_acceleration(QuantizeConfig(dtype="int8")), ULYSSES)


def test_a_worker_group_refuses_such_a_recipe_before_starting_any_process(tmp_path):
    recipe = Recipe(str(tmp_path / "absent.safetensors")).with_acceleration(TEACACHE)
    config = GroupConfig(2, device="cpu", parallel=parallel_layout(2, cfg_parallel=True))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ValueError, match="cannot run with CFG-parallel"):
        WorkerGroup(recipe, config)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_the_sampler_node_refuses_such_a_recipe_when_it_makes_the_group_config(comfyui_importable, tmp_path):
    sampler = node_module("sampler")
    weights = str(write_tiny_model(tmp_path / "tiny.safetensors"))
    with pytest.raises(ValueError, match="cannot run with CFG-parallel"):
        sampler._group_config(Recipe(weights).with_acceleration(TEACACHE), 2, "ulysses", 2, True, True)
    with pytest.raises(QuantizationError, match="on 2 GPUs"):
        sampler._group_config(Recipe(weights).with_acceleration(PER_TENSOR), 2, "ulysses", 2, False, True)
    assert sampler._group_config(Recipe(weights), 2, "ulysses", 2, True, True).parallel.cfg_parallel
