"""Requests and recipes checked against the model and the parallel layout (``dax_core.rules``) before any rank sees
them, before a warm group is touched or a new one started: the errors say what to change, and they are the words the
ranks (and the levers on a built model) would use."""

from __future__ import annotations

import dataclasses

import psutil
import pytest
import torch

from dax_core.accelerations import BuildEnv
from dax_core.cache.config import MagcacheConfig, TeacacheConfig
from dax_core.models.spec import WanSpec
from dax_core.models.tiny import write_tiny_model
from dax_core.parallel.config import ParallelConfig
from dax_core.quant import QuantizationError
from dax_core.quant.config import QuantizeConfig
from dax_core.recipe import Recipe, RecipeError
from dax_core.rules import check_recipe, check_request, step_cache_refused
from dax_core.runtime.distributed import parallel_layout
from dax_core.runtime.engine import SampleRequest, WanEngine
from dax_core.runtime.group import GroupConfig, WorkerGroup
from dax_core.runtime.sampling import GroupOptions
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


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shift": 0.0}, "shift must be a finite number > 0, got 0.0: Wan2.1 uses 8"),
        ({"shift": float("nan")}, "shift must be a finite number > 0, got nan"),
        ({"shift": -1.0}, "shift must be a finite number > 0, got -1.0"),
        ({"shift": float("inf")}, "shift must be a finite number > 0, got inf"),
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"cfg": float("nan")}, "cfg must be a finite number >= 0, got nan"),
        ({"sampler": "dpm"}, "unknown sampler 'dpm'; choose one of"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*64\), got -1"),
    ],
)
def test_sampler_inputs_are_refused_when_the_request_is_made(changes, message):
    # the node makes the request first: nothing is looked up, loaded or started for these
    with pytest.raises(ValueError, match=message):
        _with(tiny_request(), **changes)


TEACACHE = TeacacheConfig(model="wan2.1-t2v-14b")
PER_TENSOR = QuantizeConfig(dtype="int8", granularity="per-tensor")


@pytest.mark.parametrize("cache", [TEACACHE, MagcacheConfig(model="wan2.1-t2v-14b")])
def test_a_step_cache_with_cfg_parallel_is_refused_from_the_recipe(cache):
    recipe = Recipe("w.safetensors").with_acceleration(cache)
    with pytest.raises(ValueError) as refused:
        check_recipe(recipe, TINY, CFG_PARALLEL)
    assert str(refused.value) == step_cache_refused()  # what enable_sequence_parallel says on every rank
    check_recipe(recipe, TINY, ULYSSES)  # split tokens: every rank holds both branches


def test_two_step_caches_are_refused_from_the_recipe_with_the_words_of_the_build():
    both = Recipe("w.safetensors").with_acceleration(TEACACHE).with_acceleration(MagcacheConfig(model="wan2.1-t2v-14b"))
    with pytest.raises(RecipeError) as refused:
        check_recipe(both, TINY)
    model = tiny_model()
    TEACACHE.apply(model, BuildEnv(torch.device("cpu")))
    with pytest.raises(RecipeError) as on_a_rank:  # what the build says, after loading the weights
        MagcacheConfig(model="wan2.1-t2v-14b").apply(model, BuildEnv(torch.device("cpu")))
    assert str(refused.value) == str(on_a_rank.value)
    assert "a model takes one: remove one of the TeaCache and MagCache nodes" in str(refused.value)


@pytest.mark.parametrize("cache", [TeacacheConfig(), MagcacheConfig()], ids=["teacache", "magcache"])
def test_a_step_cache_without_coefficients_for_the_model_is_refused_from_the_recipe(cache):
    # "auto" takes the loaded model's published coefficients: a model of another size has none
    with pytest.raises(RecipeError) as refused:
        check_recipe(Recipe("w.safetensors").with_acceleration(cache), TINY)
    with pytest.raises(RecipeError) as on_a_rank:
        cache.apply(tiny_model(), BuildEnv(torch.device("cpu")))
    assert str(refused.value) == str(on_a_rank.value) and "custom-d64-l2-h4" in str(refused.value)


def test_a_layout_that_does_not_fit_the_heads_is_refused_from_the_recipe():
    eight = ParallelConfig(8, ulysses=8)
    with pytest.raises(ValueError) as refused:
        check_recipe(Recipe("w.safetensors"), TINY, eight)
    with pytest.raises(ValueError) as by_the_layout:
        eight.validate_for(TINY)
    assert str(refused.value) == str(by_the_layout.value) and "must divide the 4 heads" in str(refused.value)


def test_per_tensor_quantization_on_split_tokens_is_refused_from_the_recipe():
    recipe = Recipe("w.safetensors").with_acceleration(PER_TENSOR)
    with pytest.raises(QuantizationError) as refused:
        check_recipe(recipe, TINY, ULYSSES)
    with pytest.raises(QuantizationError) as on_a_rank:  # what a rank's build says, after loading the weights
        PER_TENSOR.apply(tiny_model(), BuildEnv(torch.device("cpu"), world_size=2))
    assert str(refused.value) == str(on_a_rank.value)
    assert "Quantize Linear (int8, per-tensor) on 2 GPUs" in str(refused.value)
    check_recipe(recipe, TINY, None)
    check_recipe(recipe, TINY, ParallelConfig(1))
    check_recipe(Recipe("w.safetensors").with_acceleration(QuantizeConfig(dtype="int8")), TINY, ULYSSES)


@pytest.mark.parametrize(
    ("recipe_of", "layout", "message"),
    [
        (lambda w: Recipe(w).with_acceleration(TEACACHE), parallel_layout(2, cfg_parallel=True), "CFG-parallel"),
        (lambda w: Recipe(w).with_acceleration(TeacacheConfig()), parallel_layout(2), "no published coefficients"),
        (lambda w: Recipe(w).with_acceleration(PER_TENSOR), parallel_layout(2), "on 2 GPUs"),
    ],
    ids=["step-cache-with-cfg-parallel", "coefficients-of-another-model", "per-tensor-on-split-tokens"],
)
def test_a_worker_group_refuses_such_a_recipe_before_starting_any_process(tmp_path, recipe_of, layout, message):
    recipe = recipe_of(str(write_tiny_model(tmp_path / "tiny.safetensors", text_dim=32)))
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ValueError, match=message):
        WorkerGroup(recipe, GroupConfig(2, device="cpu", parallel=layout))
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_the_sampler_node_checks_the_whole_run_before_touching_any_engine(comfyui_importable, tmp_path):
    sampler = node_module("sampler")
    weights = str(write_tiny_model(tmp_path / "tiny.safetensors", text_dim=32))
    good = tiny_request()
    spec, config = sampler.SAMPLING.prepare(Recipe(weights), good, 2, GroupOptions(cfg_parallel=True))
    assert spec.text_dim == 32 and config.parallel.cfg_parallel and config.world_size == 2
    assert sampler.SAMPLING.prepare(Recipe(weights), good, 1)[1] is None  # one GPU: no group
    refusals = [
        (Recipe(weights).with_acceleration(TEACACHE), good, {"cfg_parallel": True}, "cannot run with CFG-parallel"),
        (Recipe(weights).with_acceleration(PER_TENSOR), good, {}, "on 2 GPUs"),
        (Recipe(weights), _with(good, positive=torch.zeros(1, 7, 4096)), {}, r"must be \[B, tokens, 32\]"),
        (Recipe(weights), _with(good, cfg=1.0), {"cfg_parallel": True}, "but cfg is 1"),
        (Recipe(weights), tiny_request(negative_tokens=9), {"cfg_parallel": True}, "shorten the longer prompt"),
    ]
    for recipe, request, layout, message in refusals:
        with pytest.raises(ValueError, match=message):
            sampler.SAMPLING.prepare(recipe, request, 2, GroupOptions(**layout))
    assert len(sampler.SAMPLING.engines) == 0  # nothing was built, started or dropped for any of them


def _image_request(spec: WanSpec, clip_tokens: tuple[int, int]) -> SampleRequest:
    g = torch.Generator().manual_seed(4)
    text = torch.randn(1, 6, spec.text_dim, generator=g)
    image = torch.randn(1, spec.in_dim - spec.latent_channels, 2, 8, 8, generator=g)
    clips = [torch.randn(1, n, 1280, generator=g) for n in clip_tokens]
    return SampleRequest(text, text.clone(), torch.zeros(1, 16, 2, 8, 8), seed=0, steps=4, cfg=4.0,
                         positive_image=image, negative_image=image, positive_clip=clips[0],
                         negative_clip=clips[1])  # fmt: skip


def test_clip_features_of_other_lengths_stop_branch_batching_only_where_the_model_takes_them():
    with_clip = WanSpec(dim=256, num_layers=2, num_heads=2, ffn_dim=256, text_dim=32, in_dim=36, model_type="i2v")
    no_clip = dataclasses.replace(with_clip, clip_dim=0)  # Wan2.2 I2V A14B: the image latent alone
    request = _image_request(with_clip, (257, 514))
    layout = parallel_layout(2, cfg_parallel=True)
    assert not request.batches_branches(with_clip.takes_clip) and request.batches_branches(no_clip.takes_clip)
    with pytest.raises(
        ValueError, match="needs CLIP-vision features of the same length, but the positive branch has 257"
    ):
        check_request(request, with_clip, layout)
    check_request(request, no_clip, layout)  # the features are not used: both branches batch, CFG-parallel runs
    check_request(_image_request(with_clip, (257, 257)), with_clip, layout)


def test_a_model_without_clip_batches_its_branches_whatever_clip_features_come(tmp_path):
    path = write_tiny_model(tmp_path / "noclip.safetensors", variant="i2v", clip_dim=0, text_dim=32)
    engine = WanEngine.build(Recipe(str(path), compute_dtype="fp32"), "cpu")
    spec = engine.model.spec
    request = dataclasses.replace(_image_request(spec, (257, 514)), steps=2)
    without = dataclasses.replace(request, positive_clip=None, negative_clip=None)
    # the same forwards as without the features, batched alike: bit for bit (one branch at a time would round apart)
    assert torch.equal(engine.sample(request).latent, engine.sample(without).latent)
