"""KSamplerAdvanced's options through a 2-rank worker group (CPU, gloo, Ulysses): a first half with the leftover
noise returned, and its continuation from a SIGMAS input cut by start_at_step, each equal to one process."""

from __future__ import annotations

import dataclasses

from dax_core.runtime.distributed import parallel_layout
from dax_core.runtime.group import GroupConfig, WorkerGroup
from tests.unit.group_helpers import (
    assert_all_gone,
    assert_same_latent,
    group_processes,
    in_process,
    tiny_recipe,
    tiny_request,
)


def test_start_end_leftover_and_sigmas_input_equal_one_process(tmp_path):
    recipe = tiny_recipe(tmp_path)
    full = tiny_request(steps=6)
    first = dataclasses.replace(full, sampler="euler_ancestral", end_at_step=3, return_with_leftover_noise=True)
    with WorkerGroup(recipe, GroupConfig(2, device="cpu", parallel=parallel_layout(2))) as group:
        procs = group_processes(group)
        progress: list[tuple[int, int]] = []
        first_half = group.sample(first, on_step=lambda s, t: progress.append((s, t)))
        assert progress == [(1, 3), (2, 3), (3, 3)]  # the steps run, not the schedule's
        expected_first = in_process(recipe, first)
        assert_same_latent(first_half, expected_first)
        # the second half, without new noise, on the group's own output: a SIGMAS input cut at its step 1
        second = dataclasses.replace(
            full, sampler="dpmpp_2m", latent=first_half.latent, add_noise=False, sigmas=full.run_sigmas()[2:],
            start_at_step=1,
        )  # fmt: skip
        assert_same_latent(
            group.sample(second), in_process(recipe, dataclasses.replace(second, latent=expected_first.latent))
        )
    assert_all_gone(procs)
