"""The sampler's status on a GPU: the peak memory it reports is PyTorch's own count for the run, on one GPU and from
the ranks of a worker group, and previews come back to the CPU."""

from __future__ import annotations

import dataclasses
import gc

import pytest
import torch

from dax_core.runtime import latents
from dax_core.runtime.distributed import parallel_layout
from dax_core.runtime.engine import WanEngine
from dax_core.runtime.group import GroupConfig, WorkerGroup
from dax_core.runtime.progress import StepProgress
from tests.unit.group_helpers import tiny_recipe, tiny_request

DEVICE = torch.device("cuda", 0)
MIB = 2**20


def _bigger(req):
    """8 x 16 x 16 = 2048 video tokens against the tiny request's 32: activations well above everything else."""
    return dataclasses.replace(req, latent=torch.zeros(1, 16, 8, 32, 32))


def test_the_reported_peak_is_pytorchs_peak_of_that_run(tmp_path):
    engine = WanEngine.build(tiny_recipe(tmp_path), DEVICE)
    large = engine.sample(_bigger(tiny_request()))
    # sample() resets the allocator's peak when it starts and reads it when it ends: nothing allocated since
    assert large.peak_memory_bytes == (torch.cuda.max_memory_allocated(DEVICE),)
    weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    assert large.peak_memory_bytes[0] > weights  # the model is resident while it samples
    small = engine.sample(tiny_request())
    assert small.peak_memory_bytes == (torch.cuda.max_memory_allocated(DEVICE),)
    # a run's own peak, not the process's: the smaller video's run peaks lower than the larger one's
    assert small.peak_memory_bytes[0] < large.peak_memory_bytes[0]
    assert small.summary_lines()[-1] == f"peak GPU memory: {small.peak_memory_bytes[0] / 2**30:.1f} GiB"


def test_previews_come_back_to_the_cpu_and_the_last_is_the_result(tmp_path):
    engine = WanEngine.build(tiny_recipe(tmp_path), DEVICE)
    seen: list[StepProgress] = []
    result = engine.sample(tiny_request(), on_progress=seen.append, preview=True)
    assert [p.step for p in seen] == [1, 2, 3, 4]
    assert all(p.preview.device.type == "cpu" and p.preview.dtype == torch.float32 for p in seen)
    # Euler lands on the last prediction; the result went back through denormalize: float32 rounding only
    mid = result.latent.shape[2] // 2
    middle = latents.normalize(result.latent, 16)[:, :, mid : mid + 1]
    torch.testing.assert_close(seen[-1].preview, middle, rtol=0, atol=1e-5)


def test_a_one_gpu_group_reports_the_peak_its_rank_measured(tmp_path):
    gc.collect()  # what earlier tests left in this process would count in its peak, not in the rank's
    recipe = tiny_recipe(tmp_path)
    req = _bigger(tiny_request())
    here = WanEngine.build(recipe, DEVICE).sample(req).peak_memory_bytes[0]
    torch.cuda.empty_cache()
    with WorkerGroup(recipe, GroupConfig(1, device="cuda", collective_timeout_s=60)) as group:
        seen: list[StepProgress] = []
        got = group.sample(req, on_progress=seen.append, previews=True)
    # the same model, request and code in another process: the allocator sees the same requests, except the
    # workspaces of cuBLAS / cuDNN, which depend on the handles a process creates first (a few MiB at most)
    assert len(got.peak_memory_bytes) == 1 and abs(got.peak_memory_bytes[0] - here) <= 8 * MIB
    assert [p.step for p in seen] == [1, 2, 3, 4] and all(p.preview is not None for p in seen)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_a_two_gpu_group_reports_a_peak_per_gpu(tmp_path):
    config = GroupConfig(2, device="cuda", parallel=parallel_layout(2), collective_timeout_s=60)
    with WorkerGroup(tiny_recipe(tmp_path), config) as group:
        got = group.sample(_bigger(tiny_request()))
    assert len(got.peak_memory_bytes) == 2 and all(b > 0 for b in got.peak_memory_bytes)
    assert got.summary_lines()[-1].endswith("GiB (per GPU)")
