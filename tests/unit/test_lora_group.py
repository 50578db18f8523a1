"""LoRAs on a worker group (2 gloo ranks, Ulysses): every rank merges alike, so the group gives the one-process
result; a new strength, and then another recipe, are taken by the running ranks (one "rebuild" message each); a
LoRA file that changed under its recipe is refused by the owner, and the group stays up."""

from __future__ import annotations

import dataclasses

import pytest

from dax_core.lora import LoraError, lora_ref
from dax_core.lora.tiny import write_tiny_lora
from dax_core.models.loading import inspect_weights
from dax_core.runtime.distributed import parallel_layout
from dax_core.runtime.group import GroupConfig, WorkerGroup
from tests.numerics import rel_error
from tests.unit.group_helpers import assert_all_gone, assert_same_latent, group_processes, in_process, tiny_recipe
from tests.unit.group_helpers import tiny_request as group_request

CONFIG = GroupConfig(2, device="cpu", parallel=parallel_layout(2), collective_timeout_s=30.0)


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora-group")
    base = tiny_recipe(folder)
    lora = write_tiny_lora(folder / "lora.safetensors", inspect_weights(base.weights).spec, rank=4)
    return base, lambda strength: base.with_loras((lora_ref(lora, strength),))


def test_a_worker_group_merges_like_one_process_and_takes_new_loras_in_its_processes(recipes):
    base, with_lora = recipes
    request = group_request()
    group = WorkerGroup(with_lora(1.0), CONFIG)
    procs = group_processes(group)
    try:
        pids = group.worker_pids
        first = group.sample(request)
        assert_same_latent(first, in_process(with_lora(1.0), request))
        assert rel_error(first.latent, in_process(base, request).latent) > 1e-2  # the ranks merged the LoRA
        assert first.notes == ("LoRA lora.safetensors at strength 1: 69 parameters changed",)

        group.use_recipe(with_lora(0.4))
        assert group.worker_pids == pids and group.recipe == with_lora(0.4)
        assert_same_latent(group.sample(request), in_process(with_lora(0.4), request))
        assert group.launcher_log().count("merged 1 LoRA(s) again") == 2  # on each rank, in place

        other = dataclasses.replace(base, weight_dtype="fp16")  # not a LoRA change: each rank builds anew
        group.use_recipe(other)
        assert group.worker_pids == pids
        assert_same_latent(group.sample(request), in_process(other, request))

        stale = with_lora(1.0)  # then the file is written anew: refused on the owner, before any rank sees it
        write_tiny_lora(stale.loras[0].path, inspect_weights(base.weights).spec, rank=4, seed=9)
        with pytest.raises(LoraError, match="changed since the Load LoRA node read it"):
            group.use_recipe(stale)
        assert group.alive and group.worker_pids == pids and group.recipe == other
    finally:
        group.close()
    assert_all_gone(procs)
