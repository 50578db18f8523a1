"""A few-step schedule (distilled LoRAs: 4-8 steps) computes every step with its step cache left out, and says so;
a few steps cut from a longer schedule keep it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dax_core.cache.magcache import MagCache
from dax_core.cache.teacache import TeaCache
from dax_core.runtime.engine import FEW_STEPS
from tests.unit.test_teacache_model import BlockStackCounter
from tests.unit.tiny_wan import tiny_engine, tiny_request


def _teacache() -> TeaCache:
    return TeaCache((0.0,), threshold=1.0, mode="e")  # a zero polynomial: every step it may skip, it skips


def _magcache() -> MagCache:
    return MagCache("wan2.1-t2v-14b", threshold=10.0, max_consecutive_skips=0, retention_ratio=0.0)


@pytest.mark.parametrize("make", [_teacache, _magcache], ids=["teacache", "magcache"])
def test_a_few_step_run_computes_every_step_and_says_why(make):
    engine = tiny_engine()
    plain = engine.sample(tiny_request(steps=4))
    cache = make()
    engine.model.step_cache = cache
    counter = BlockStackCounter(engine.model)
    result = engine.sample(tiny_request(steps=4))
    counter.remove()
    assert torch.equal(result.latent, plain.latent) and counter.rows == [2] * 4  # every step, cond + uncond batched
    assert result.step_cache is None
    (note,) = result.notes
    assert note.startswith(f"{cache.name} is off for this 4-step schedule: at {FEW_STEPS} steps or fewer")
    assert note in result.summary_lines() and f"remove the {cache.name} node" in note
    assert engine.model.step_cache is cache  # the next, longer run has it again
    longer = engine.sample(tiny_request(steps=FEW_STEPS + 2))
    assert longer.notes == () and sum(b.skipped for b in longer.step_cache.branches) > 0
    cut = engine.sample(dataclasses.replace(tiny_request(steps=3 * FEW_STEPS), start_at_step=FEW_STEPS + 4))
    assert cut.steps == 2 * FEW_STEPS - 4 and cut.notes == () and cut.step_cache is not None
