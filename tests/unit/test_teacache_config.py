"""The TeaCache recipe entry and the TeaCache (DAX) node: validation, serialization, apply, summary text."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dax_core.accelerations import CONFIG_MODULES, BuildEnv, apply_accelerations
from dax_core.cache.base import BranchReport, StepCacheReport
from dax_core.cache.coefficients import published_coefficients
from dax_core.cache.config import TeacacheConfig
from dax_core.cache.teacache import TeaCache
from dax_core.recipe import Recipe, RecipeError
from dax_core.runtime.engine import SampleResult
from tests.environment import REPO
from tests.unit.node_modules import node_module as load_node_module
from tests.unit.tiny_wan import tiny_model


def _load_node_module():
    """nodes/teacache.py on its own: it needs dax_core only (the nodes package itself imports ComfyUI)."""
    return load_node_module("teacache")


def test_config_round_trips_through_json_in_a_recipe():
    config = TeacacheConfig(threshold=0.15, mode="e", coefficients=(1.0, -2.0, 0.5), start=0.1, end=0.9)
    recipe = Recipe("wan.safetensors").with_acceleration(config)
    data = json.loads(json.dumps(recipe.to_dict()))
    assert data["accelerations"][0]["coefficients"] == [1.0, -2.0, 0.5]
    again = Recipe.from_dict(data)
    assert again == recipe and again.fingerprint() == recipe.fingerprint()
    assert again.acceleration("teacache").coefficients == (1.0, -2.0, 0.5)  # a tuple again: hashable, frozen
    assert TeacacheConfig(threshold=0.2).to_dict() != TeacacheConfig(threshold=0.1).to_dict()


def test_recipes_rebuild_teacache_once_the_levers_are_imported():
    code = (
        "import dax_core.accelerations\nfrom dax_core.recipe import Recipe\n"
        "r = Recipe.from_dict({'weights': 'w', 'accelerations': [{'kind': 'teacache', 'threshold': 0.3}]})\n"
        "print(type(r.accelerations[0]).__name__, r.accelerations[0].threshold)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["TeacacheConfig", "0.3"]
    assert "dax_core.cache.config" in CONFIG_MODULES


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": -0.1}, "threshold must be a number >= 0"),
        ({"threshold": float("nan")}, "threshold must be a number >= 0"),
        ({"mode": "ret"}, "mode 'ret' is not one of e0, e"),
        ({"model": "wan2.2"}, "model 'wan2.2' is not one of auto, wan2.1-t2v-1.3b"),
        ({"coefficients": (1.0, float("inf"))}, "coefficients must be 1 to 16 finite numbers"),
        ({"start": 0.5, "end": 0.5}, "must satisfy 0 <= start < end <= 1"),
        ({"max_consecutive_skips": -1}, "max_consecutive_skips must be >= 0"),
        ({"max_consecutive_skips": 1.5}, "max_consecutive_skips must be an integer"),
        ({"cache_device": "cuda:1"}, "cache_device 'cuda:1' is not one of model, cpu"),
    ],
)
def test_invalid_settings_say_what_to_change(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        TeacacheConfig(**kwargs)


def test_coefficients_follow_the_model_size_unless_given():
    assert TeacacheConfig().resolve_coefficients("wan2.1-t2v-14b") == published_coefficients("wan2.1-t2v-14b", "e0")
    assert TeacacheConfig(mode="e").resolve_coefficients("wan2.1-t2v-1.3b") == published_coefficients(
        "wan2.1-t2v-1.3b", "e"
    )
    pinned = TeacacheConfig(model="wan2.1-t2v-1.3b")
    assert pinned.resolve_coefficients("wan2.1-t2v-14b") == published_coefficients("wan2.1-t2v-1.3b", "e0")
    assert TeacacheConfig(coefficients=(2.0, 1.0)).resolve_coefficients("wan2.1-t2v-14b") == (2.0, 1.0)
    with pytest.raises(RecipeError, match="no published coefficients for a custom-d64-l2-h4 model"):
        TeacacheConfig().resolve_coefficients("custom-d64-l2-h4")


def test_apply_installs_a_teacache_on_that_model_only():
    model, other = tiny_model(), tiny_model()
    recipe = Recipe("w").with_acceleration(
        TeacacheConfig(threshold=0.3, mode="e", coefficients=(1.0, 0.0), max_consecutive_skips=2, cache_device="cpu")
    )
    apply_accelerations(model, recipe, BuildEnv(torch.device("cpu")))
    cache = model.step_cache
    assert isinstance(cache, TeaCache) and other.step_cache is None
    assert cache.policy.coefficients == (1.0, 0.0) and cache.policy.threshold == 0.3 and cache.policy.group is None
    assert cache.mode == "e" and cache.window.first_steps == 1 and cache.window.max_consecutive == 2
    assert cache.cache_device == torch.device("cpu")
    with pytest.raises(RecipeError, match="no published coefficients"):
        TeacacheConfig().apply(tiny_model(), BuildEnv(torch.device("cpu")))


def test_sequence_parallel_apply_requires_the_group():
    with pytest.raises(RecipeError, match="on 2 sequence-parallel ranks needs their process group"):
        TeacacheConfig(coefficients=(1.0,)).apply(tiny_model(), BuildEnv(torch.device("cpu"), world_size=2))


def test_sample_result_reports_the_skips_per_branch():
    report = StepCacheReport("TeaCache", 10, (BranchReport("cond", "CCSSCSSCSC"), BranchReport("uncond", "CCSCCCSCSC")))
    assert (report.branch("cond").skipped, report.branch("uncond").skipped) == (5, 3)
    assert report.implied_speedup == pytest.approx(20 / 12)
    result = SampleResult(torch.zeros(1), 10, 20.0, 2.9, report)
    assert result.summary_lines() == [
        "10 steps in 20.0 s (first step 2.9 s, then 1.90 s/step)",
        "TeaCache skipped cond 5/10, uncond 3/10 steps (~1.67x fewer transformer passes)",
    ]
    assert SampleResult(torch.zeros(1), 1, 2.0, 2.0).summary_lines() == ["1 step in 2.0 s"]
    with pytest.raises(KeyError, match="no branch 'x'"):
        report.branch("x")


def test_node_returns_a_new_recipe_with_the_config():
    node = _load_node_module().DaxTeacache()
    base = Recipe("wan.safetensors")
    (patched,) = node.patch(base, 0.12, "auto", "e", 0.1, 0.9, 3, "cpu")
    assert base.accelerations == ()  # the input recipe is left alone
    assert patched.acceleration("teacache") == TeacacheConfig(
        threshold=0.12, mode="e", start=0.1, end=0.9, max_consecutive_skips=3, cache_device="cpu"
    )
    (pinned,) = node.patch(base, 0.2, "wan2.1-t2v-14b", "e0", 0.0, 1.0, 0, "model")
    assert pinned.acceleration("teacache").model == "wan2.1-t2v-14b"
    (custom,) = node.patch(base, 0.2, "custom", "e0", 0.0, 1.0, 0, "model", "[1e3, -2.5, 0.1]")
    assert custom.acceleration("teacache").coefficients == (1000.0, -2.5, 0.1)
    (again,) = node.patch(patched, 0.3, "auto", "e0", 0.0, 1.0, 0, "model")
    assert [a.threshold for a in again.accelerations] == [0.3]  # replaces, never stacks


def test_node_inputs_and_errors():
    module = _load_node_module()
    inputs = module.DaxTeacache.INPUT_TYPES()
    assert inputs["required"]["coefficients"][0] == [
        "auto", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p", "custom"
    ]  # fmt: skip
    assert "14B: 0.10 ... 0.20 in e0 mode" in inputs["required"]["threshold"][1]["tooltip"]
    node = module.DaxTeacache()
    with pytest.raises(ValueError, match="coefficients = custom needs custom_coefficients"):
        node.patch(Recipe("w"), 0.2, "custom", "e0", 0.0, 1.0, 0, "model", " ")
    with pytest.raises(ValueError, match="comma-separated numbers, got '1, two'"):
        node.patch(Recipe("w"), 0.2, "custom", "e0", 0.0, 1.0, 0, "model", "1, two")
    with pytest.raises(RecipeError, match="must satisfy 0 <= start < end <= 1"):
        node.patch(Recipe("w"), 0.2, "auto", "e0", 0.8, 0.2, 0, "model")


def test_a_built_engine_takes_a_new_step_cache_without_a_rebuild():
    from dax_core.cache.config import MagcacheConfig
    from dax_core.runtime.engine import WanEngine

    base = Recipe("m.safetensors")
    engine = WanEngine(tiny_model(), base, "cpu")
    assert engine.model.step_cache is None
    tea = base.with_acceleration(TeacacheConfig(threshold=0.3, model="wan2.1-t2v-14b"))
    engine.use_step_caches_of(tea)
    assert isinstance(engine.model.step_cache, TeaCache) and engine.model.step_cache.policy.threshold == 0.3
    assert engine.recipe == tea and engine.recipe is not tea
    engine.use_step_caches_of(base.with_acceleration(MagcacheConfig(model="wan2.1-t2v-14b")))
    assert engine.model.step_cache.name == "MagCache"
    engine.use_step_caches_of(base)
    assert engine.model.step_cache is None
    with pytest.raises(ValueError, match="step caches only"):
        engine.use_step_caches_of(Recipe("other.safetensors"))


def test_a_step_cache_that_cannot_be_applied_leaves_the_engine_with_its_previous_one():
    from dax_core.runtime.engine import WanEngine

    base = Recipe("m.safetensors")
    engine = WanEngine(tiny_model(), base, "cpu")
    tea = base.with_acceleration(TeacacheConfig(threshold=0.3, model="wan2.1-t2v-14b"))
    engine.use_step_caches_of(tea)
    cache = engine.model.step_cache
    # "auto" coefficients for a model of no published size: refused when applied
    with pytest.raises(RecipeError, match="no published coefficients"):
        engine.use_step_caches_of(base.with_acceleration(TeacacheConfig(threshold=0.3)))
    assert engine.model.step_cache is cache and engine.recipe == tea
    engine.use_step_caches_of(tea)  # back to the recipe it names: the cache it runs with is that recipe's
    assert engine.model.step_cache is cache
