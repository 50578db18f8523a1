"""Wan2.2 in a 2-rank worker group (CPU, gloo) against one process: a DAX_MODEL of both A14B experts (each
rank holds both and switches at the boundary) and TI2V with Wan22ImageToVideoLatent's noise mask (per-frame
timesteps on token slices, Ulysses and ring: each rank's slice of the per-token time embedding; CFG-parallel: each
rank's guidance branch of the per-frame timesteps).

Tolerance: group_helpers.assert_same_latent (float32 rounding of matmuls on token slices, ~1e-6 a step); a wrong
expert, a lost mask or a misaligned time-embedding slice is off by O(0.1).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dax_core.models.tiny import write_tiny_model
from dax_core.recipe import Recipe
from dax_core.runtime.distributed import build_engine, parallel_layout
from dax_core.runtime.group import GroupConfig, WorkerGroup
from tests.unit.group_helpers import TINY, assert_all_gone, assert_same_latent, group_processes, tiny_request


def _in_process(recipe: Recipe, req):
    return build_engine(recipe, torch.device("cpu"), None).sample(req)


def test_a_pair_of_experts_in_a_group_equals_one_process(tmp_path):
    high = write_tiny_model(tmp_path / "high.safetensors", seed=1, **TINY)
    low = write_tiny_model(tmp_path / "low.safetensors", seed=2, **TINY)
    recipe = Recipe(str(high), compute_dtype="fp32", model_choice="wan2.2-t2v-a14b", low_noise_weights=str(low))
    req = dataclasses.replace(tiny_request(steps=6), shift=12.0)  # steps 0-3 high-noise, 4-5 low-noise
    with WorkerGroup(recipe, GroupConfig(2, device="cpu", parallel=parallel_layout(2))) as group:
        procs = group_processes(group)
        progress: list[tuple[int, int]] = []
        got = group.sample(req, on_step=lambda s, t: progress.append((s, t)))
    assert_all_gone(procs)
    expected = _in_process(recipe, req)
    assert_same_latent(got, expected)
    assert progress == [(i, 6) for i in range(1, 7)]
    assert any("high-noise expert 4, low-noise expert 2 steps" in n for n in got.notes), got.notes


@pytest.mark.parametrize(
    "layout",
    [{"mode": "ulysses"}, {"mode": "ring"}, {"mode": "ulysses", "cfg_parallel": True}],
    ids=["ulysses", "ring", "cfg-parallel"],
)
def test_ti2v_with_a_first_frame_in_a_group_equals_one_process(tmp_path, layout):
    path = write_tiny_model(tmp_path / "ti2v.safetensors", seed=3, variant="ti2v", **TINY)
    recipe = Recipe(str(path), compute_dtype="fp32")
    g = torch.Generator().manual_seed(4)
    latent = torch.zeros(1, 48, 3, 8, 6)  # 36 tokens, 12 a frame: each rank's 18 cut a frame in two
    latent[:, :, :1] = torch.randn(1, 48, 1, 8, 6, generator=g)
    mask = torch.ones(1, 1, 3, 8, 6)
    mask[:, :, 0] = 0.0
    req = dataclasses.replace(tiny_request(steps=4), latent=latent, noise_mask=mask)
    with WorkerGroup(recipe, GroupConfig(2, device="cpu", parallel=parallel_layout(2, **layout))) as group:
        procs = group_processes(group)
        got = group.sample(req)
    assert_all_gone(procs)
    expected = _in_process(recipe, req)
    assert_same_latent(got, expected)
    unmasked = _in_process(recipe, dataclasses.replace(req, noise_mask=None))
    assert (unmasked.latent - expected.latent).abs().max() > 1e-2  # the mask is in the comparison
