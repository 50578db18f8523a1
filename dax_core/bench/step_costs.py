"""What a step cache costs on a computed and on a skipped step, and MagCache's schedule at a published setting.

Skip rates on random weights mean nothing, so a benchmark measures the costs and takes the schedule as given:
``T = computed * computed_s + skipped * skipped_s``.
"""

from __future__ import annotations

import logging

import torch

from ..cache.magcache import MagCache
from ..cache.magcache_ratios import MAG_RATIOS
from ..cache.residual import ResidualStepCache
from ..cache.teacache import TeaCache
from ..models.wan import WanModel
from ..recipe import Recipe
from .cases import TINY
from .inputs import ForwardInputs
from .rungs import STEPS
from .timing import median, timed
from .weights import build_model

NEVER = 1e9
"""A threshold the accumulated change never reaches: every step the cache's window allows is skipped."""


def ratios_for(spec_name: str) -> str:
    """The MagCache ratios of the model (those of the 14B for a model without its own: the costs do not depend
    on them)."""
    return spec_name if spec_name in MAG_RATIOS else "wan2.1-t2v-14b"


def _always_skipping(kind: str, spec_name: str) -> ResidualStepCache:
    if kind == "teacache":
        return TeaCache((1.0, 0.0), NEVER, mode="e")  # "e": only step 0 must compute
    if kind == "magcache":
        return MagCache(ratios_for(spec_name), NEVER, max_consecutive_skips=0, retention_ratio=0.0)
    raise ValueError(f"no step cache {kind!r}: teacache or magcache")


@torch.inference_mode()
def step_costs(model: WanModel, inputs: ForwardInputs, device: torch.device, kind: str, reps: int) -> dict:
    """Seconds of one computed step (step 0: the block stack runs and its residual is stored) and the median of
    ``reps`` skipped steps (prepare, the cache's decision, the residual reused, the head), each a whole forward of
    one branch, with the ``kind`` cache on ``model``."""
    cache = _always_skipping(kind, model.spec.name)
    previous = model.step_cache
    model.step_cache = cache
    cache.start_run(STEPS)
    step = 0

    def forward() -> None:
        nonlocal step
        cache.start_step(step)
        step += 1
        inputs(model, branches=("cond",))

    try:
        (computed,) = timed(forward, 1, device)
        skipped = timed(forward, reps, device)
        pattern = cache.end_run().branch("cond").pattern
    finally:
        model.step_cache = previous
    if pattern != "C" + "S" * reps:
        raise RuntimeError(f"{kind} did not skip as driven: {pattern}")
    return {"computed_s": computed, "skipped_s": median(skipped), "skipped_times_s": skipped}


def magcache_pattern(ratios: str, threshold: float, k: int, retention: float, steps: int = STEPS) -> str:
    """MagCache's schedule ("C" computed, "S" skipped) of a ``steps``-step run with calibrated ``ratios``. Its decisions
    follow the step index alone, so a tiny model on the CPU takes exactly the schedule of the real weights."""
    from ..runtime.engine import SampleRequest, WanEngine

    engine = WanEngine(build_model(TINY, "cpu", torch.float32, 0), Recipe("unused.safetensors"), "cpu")
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 8, TINY.text_dim, generator=g)
    req = SampleRequest(text, text, torch.zeros(1, 16, 1, 8, 8), seed=0, steps=steps, cfg=5.0, sampler="euler")
    engine.model.step_cache = MagCache(ratios, threshold, max_consecutive_skips=k, retention_ratio=retention)
    quiet = logging.getLogger("dax_core.runtime.engine")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # a tiny run would log two lines
    try:
        return engine.sample(req).step_cache.branch("cond").pattern
    finally:
        quiet.setLevel(level)
