"""MagCache behind the same step-cache interface: published ratios, decisions as published, recipe and node."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dax_core.accelerations import BuildEnv, apply_accelerations
from dax_core.cache.config import MagcacheConfig, TeacacheConfig
from dax_core.cache.magcache import MagCache, branch_ratios, resample
from dax_core.cache.magcache_ratios import MAG_RATIOS
from dax_core.recipe import Recipe, RecipeError
from tests.unit.node_modules import node_module as load_node_module
from tests.unit.tiny_wan import tiny_engine, tiny_model, tiny_request


def _published_pattern(model: str, steps: int, threshold: float, k: int, retention: float) -> tuple[str, str]:
    """MagCache4Wan2.1's loop, written as published: one call counter over interleaved cond/uncond calls."""
    ratios = np.array(MAG_RATIOS[model])
    if len(ratios) != 2 * steps:
        scale = (len(ratios) // 2 - 1) / (steps - 1)
        index = np.round(np.arange(steps) * scale).astype(int)
        ratios = np.stack([ratios[0::2][index], ratios[1::2][index]], axis=1).reshape(-1)
    acc_ratio, acc_err, acc_steps, patterns = [1.0, 1.0], [0.0, 0.0], [0, 0], ["", ""]
    for cnt in range(2 * steps):
        b, skip = cnt % 2, False
        if cnt >= int(2 * steps * retention):
            acc_ratio[b] *= ratios[cnt]
            acc_steps[b] += 1
            acc_err[b] += abs(1 - acc_ratio[b])
            if acc_err[b] < threshold and acc_steps[b] <= k:
                skip = True
            else:
                acc_ratio[b], acc_err[b], acc_steps[b] = 1.0, 0.0, 0
        patterns[b] += "S" if skip else "C"
    return patterns[0], patterns[1]


def test_published_ratios_are_interleaved_pairs_per_step():
    assert {k: len(v) for k, v in MAG_RATIOS.items()} == {
        "wan2.1-t2v-1.3b": 100, "wan2.1-t2v-14b": 100, "wan2.1-i2v-14b-480p": 80, "wan2.1-i2v-14b-720p": 80,
    }  # fmt: skip
    r = branch_ratios("wan2.1-t2v-14b", 50)
    assert r["cond"][:3] == (1.0, 1.02504, 1.00025) and r["uncond"][:3] == (1.0, 1.03017, 1.00251)
    assert (r["cond"][-1], r["uncond"][-1]) == (0.86111, 0.86189)
    with pytest.raises(ValueError, match="no published MagCache ratios for 'x'"):
        branch_ratios("x", 50)


@pytest.mark.parametrize("steps", [1, 2, 7, 20, 30, 49, 50, 64, 100])
def test_resampling_matches_numpy_rounding(steps):
    src = MAG_RATIOS["wan2.1-t2v-1.3b"][0::2]
    if steps == 1:
        want = [src[-1]]
    else:
        want = list(np.array(src)[np.round(np.arange(steps) * ((len(src) - 1) / (steps - 1))).astype(int)])
    assert list(resample(src, steps)) == want


@pytest.mark.parametrize(
    ("model", "steps", "threshold", "k"),
    [("wan2.1-t2v-14b", 50, 0.24, 6), ("wan2.1-t2v-1.3b", 50, 0.12, 2), ("wan2.1-t2v-1.3b", 30, 0.12, 4)],
)
def test_decisions_follow_the_published_loop(model, steps, threshold, k):
    engine = tiny_engine()
    engine.model.step_cache = MagCache(model, threshold, max_consecutive_skips=k, retention_ratio=0.2)
    counter = []
    hook = engine.model.blocks[0].register_forward_hook(lambda _m, a, _o: counter.append(a[0].shape[0]))
    report = engine.sample(tiny_request(steps=steps)).step_cache
    hook.remove()
    cond, uncond = _published_pattern(model, steps, threshold, k, 0.2)
    # as published, except that DAX always computes the last step
    assert report.branch("cond").pattern == cond[:-1] + "C"
    assert report.branch("uncond").pattern == uncond[:-1] + "C"
    assert cond.count("S") > steps // 4  # the published settings skip a good share
    assert sum(counter) == report.branch("cond").computed + report.branch("uncond").computed


def test_threshold_zero_is_exact():
    engine = tiny_engine()
    req = tiny_request()
    plain = engine.sample(req).latent
    engine.model.step_cache = MagCache("wan2.1-t2v-14b", 0.0, max_consecutive_skips=0, retention_ratio=0.0)
    result = engine.sample(req)
    assert torch.equal(result.latent, plain)
    assert result.step_cache.summary().startswith("MagCache skipped cond 0/12, uncond 0/12")


@torch.inference_mode()
def test_branches_without_calibrated_ratios_are_refused():
    model = tiny_model()
    cache = MagCache("wan2.1-t2v-14b", 0.1)
    model.step_cache = cache
    cache.start_run(4)
    cache.start_step(0)
    x, t, ctx = torch.randn(1, 16, 3, 8, 8), torch.tensor([500.0]), torch.randn(1, 7, 32)
    with pytest.raises(ValueError, match="calibrated ratios for the branches cond, uncond, not 'default'"):
        model(x, t, ctx)


def test_config_round_trip_apply_and_validation():
    config = MagcacheConfig(threshold=0.24, max_consecutive_skips=6, model="wan2.1-t2v-14b", cache_device="cpu")
    recipe = Recipe("w").with_acceleration(config)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    model = tiny_model()
    apply_accelerations(model, recipe, BuildEnv(torch.device("cpu"), world_size=4))  # no group needed
    cache = model.step_cache
    assert isinstance(cache, MagCache) and cache.model == "wan2.1-t2v-14b" and cache.threshold == 0.24
    assert cache.window.max_consecutive == 6 and cache.window.start == 0.2
    assert MagcacheConfig().resolve_model("wan2.1-t2v-1.3b") == "wan2.1-t2v-1.3b"
    with pytest.raises(RecipeError, match="no calibrated ratios for a custom-d64-l2-h4 model"):
        MagcacheConfig().apply(tiny_model(), BuildEnv(torch.device("cpu")))
    with pytest.raises(RecipeError, match=r"retention_ratio 0\.5 and end 0\.4 must satisfy"):
        MagcacheConfig(retention_ratio=0.5, end=0.4)
    with pytest.raises(RecipeError, match=r"MagCache model 'wan2\.2' is not one of auto"):
        MagcacheConfig(model="wan2.2")


def test_a_model_takes_one_step_cache():
    both = (
        Recipe("w")
        .with_acceleration(TeacacheConfig(coefficients=(1.0,)))
        .with_acceleration(MagcacheConfig(model="wan2.1-t2v-14b"))
    )
    with pytest.raises(RecipeError, match="already has a TeaCache step cache; a model takes one"):
        apply_accelerations(tiny_model(), both, BuildEnv(torch.device("cpu")))


def test_node_returns_a_new_recipe_with_the_config():
    module = load_node_module("magcache")
    node = module.DaxMagcache()
    base = Recipe("w")
    (patched,) = node.patch(base, 0.24, 6, 0.2, 1.0, "auto", "model")
    assert base.accelerations == ()
    assert patched.acceleration("magcache") == MagcacheConfig(threshold=0.24, max_consecutive_skips=6)
    assert module.DaxMagcache.INPUT_TYPES()["required"]["model"][0][0] == "auto"
