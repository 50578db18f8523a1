"""An image-to-video request through a 2-rank worker group (CPU, gloo, Ulysses): the image conditioning crosses the
control channel to every rank, each rank's model is the I2V model the recipe carries, and the latent equals one
process's. A request without its image is refused by the owner, and the group stays up for the next one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dax_core.models.loading import inspect_weights
from dax_core.models.tiny import write_tiny_model
from dax_core.recipe import Recipe
from dax_core.runtime.distributed import parallel_layout
from dax_core.runtime.engine import SampleRequest
from dax_core.runtime.group import GroupConfig, WorkerGroup
from tests.unit.group_helpers import TINY, assert_all_gone, assert_same_latent, group_processes, in_process

CLIP = 24


def test_an_i2v_request_through_the_group_equals_one_process(tmp_path):
    path = write_tiny_model(tmp_path / "i2v.safetensors", variant="i2v", clip_dim=CLIP, dtype="fp32", **TINY)
    recipe = Recipe(str(path), compute_dtype="fp32", model=inspect_weights(path).model)
    g = torch.Generator().manual_seed(3)
    text, image, clip = (1, 6, TINY["text_dim"]), (1, 20, 2, 8, 8), (1, 9, CLIP)
    request = SampleRequest(
        positive=torch.randn(text, generator=g), negative=torch.randn(text, generator=g),
        latent=torch.zeros(1, 16, 2, 8, 8), seed=4, steps=3, cfg=5.0, sampler="euler",
        positive_image=torch.randn(image, generator=g), negative_image=torch.randn(image, generator=g),
        positive_clip=torch.randn(clip, generator=g), negative_clip=torch.randn(clip, generator=g),
    )  # fmt: skip
    with WorkerGroup(recipe, GroupConfig(2, device="cpu", parallel=parallel_layout(2))) as group:
        procs = group_processes(group)
        assert_same_latent(group.sample(request), in_process(recipe, request))
        with pytest.raises(ValueError, match="needs the start image"):
            group.sample(dataclasses.replace(request, positive_image=None))
        assert group.alive  # refused on the owner: no rank saw it
    assert_all_gone(procs)
