"""Regional compile with every other lever on (8-bit linears, an attention backend, TeaCache, CFG batched):
the compiled sampling run equals the eager one, and the blocks compile exactly as often as their input shapes
say."""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.utils import counters

from dax_core.accelerations import BuildEnv, apply_accelerations
from dax_core.attention.config import AttentionConfig
from dax_core.cache.config import TeacacheConfig
from dax_core.cache.teacache import TeaCache
from dax_core.compile import CompileConfig, compile_blocks
from dax_core.models.wan import WanModel
from dax_core.quant import QuantLinear
from dax_core.quant.config import QuantizeConfig
from dax_core.recipe import Recipe
from dax_core.runtime.engine import WanEngine
from tests.numerics import rel_error
from tests.unit.test_compile import CountingBackend
from tests.unit.tiny_wan import TINY, fill_checkpoint_like_, tiny_request

pytestmark = pytest.mark.usefixtures("fresh_dynamo")

CPU = BuildEnv(torch.device("cpu"))
# rescale(d) = d on the relative change of the time embedding, which moves by 0.82-1.04 per step on this model:
# the sum crosses 2.0 every two or three steps, 0.07 or more away from the threshold. The decisions depend on
# the timestep alone (computed eagerly, outside the blocks), so the compiled and eager runs must take the same.
TEACACHE = TeacacheConfig(threshold=2.0, mode="e", coefficients=(1.0, 0.0))
PATTERN = "CSSCSCSCC"  # 9 steps (8 or fewer run without a step cache): first and last forced, 4 skipped
STEPS = 9


def _model() -> WanModel:
    """Seeded like a checkpoint (0.5/sqrt(fan_in) weights, norm weights near 1), float32 compute.

    Not tiny_wan's 0.1-std weights: there fp8 activations sit so often next to a rounding boundary that the
    first one a reassociated float32 sum flips (a 1e-6 change) grows tenfold per CFG-5 step (measured), which
    says nothing about compile. Float32, because the CPU reference linears take any dtype and bf16 rounding in
    other places (inductor keeps fused intermediates in float32) would bury what is compared here."""
    return fill_checkpoint_like_(WanModel(TINY, dtype=torch.float32))


def _levers(dtype: str | None) -> tuple:
    quant = () if dtype is None else (QuantizeConfig(dtype=dtype, granularity="per-token-per-channel"),)
    return (*quant, AttentionConfig(backend="sdpa"), TEACACHE)


def _engine(*accelerations) -> WanEngine:
    recipe = Recipe("unused.safetensors", compute_dtype="fp32", accelerations=accelerations)
    model = _model()
    apply_accelerations(model, recipe, CPU)
    return WanEngine(model, recipe, "cpu")


@pytest.mark.parametrize("dtype", ["fp8", "int8"])
def test_inductor_sampling_run_equals_eager_with_every_lever_on(dtype):
    """Inductor on the CPU (C++ codegen): 13-31 s per scheme on two cores with a cold compile cache."""
    req = tiny_request(steps=STEPS)
    eager = _engine(*_levers(dtype)).sample(req)
    # compile listed first: apply_accelerations applies it last, after the layers it traces are in place
    engine = _engine(CompileConfig(backend="inductor"), *_levers(dtype))
    assert all(isinstance(m, QuantLinear) for m in engine.model.blocks[0].ffn if not isinstance(m, torch.nn.GELU))
    assert engine.model.compiled is not None and engine.model.step_cache is not None
    compiled = engine.sample(req)

    assert [b.pattern for b in eager.step_cache.branches] == [PATTERN, PATTERN]
    assert compiled.step_cache == eager.step_cache  # the same skip schedule, branch by branch
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]  # one graph, both blocks
    # Compiled and eager differ only in the order of float32 sums (~1e-7 per forward, measured). Where that tips
    # an activation over an 8-bit rounding boundary, one element moves by a whole quantization step, and later
    # steps carry it. Measured on the final latent over four prompts: 4e-7 to 1.6e-6 (fp8) and 2.7e-6 to 6.5e-6
    # (int8), at most 1/900 and 1/51 of what the quantization itself changes (1.2e-3 to 1.5e-3 fp8, 3.3e-4 to
    # 3.8e-4 int8, against the same run with float linears). A fifth of it leaves 10x room; a compiled graph that
    # lost the quantization, or quantized per tensor instead of per token, is off by about the whole of it.
    unquantized = _engine(*_levers(None)).sample(req)
    quantization = rel_error(unquantized.latent, eager.latent)
    assert quantization > 1e-4  # the eager run really is quantized
    assert rel_error(compiled.latent, eager.latent) < 0.2 * quantization


@pytest.mark.parametrize("dtype", ["fp8", "int8"])
def test_blocks_compile_once_per_input_shape_across_steps_branches_and_prompts(dtype, caplog):
    """With static shapes a block graph is specialised on (batch, video tokens, text tokens) and nothing else:
    not on the timestep or TeaCache's state (they reach the blocks as tensors or not at all), not on which block
    runs (the weights and scales are graph inputs), not on which rows of the batch a step cache picked."""
    caplog.set_level(logging.INFO, logger="dax_core.compile")
    engine = _engine(*_levers(dtype))
    model = engine.model
    counter = CountingBackend()
    compile_blocks(model, CompileConfig(), backend=counter)

    # 1. Two prompts, 9 steps, cond and uncond batched in one forward: one graph (batch 2 x 48 x 7) for both
    #    blocks and every computed step; skipped steps do not call the blocks.
    first = engine.sample(tiny_request(prompt_seed=1, seed=3, steps=STEPS))
    assert first.step_cache.branch("cond").pattern == PATTERN
    assert counter.graphs == 1
    engine.sample(tiny_request(prompt_seed=2, seed=4, steps=STEPS))
    assert counter.graphs == 1

    # 2. Branches that disagree. The engine gives both rows the same timestep, so they never do there; a sampler
    #    with per-row timesteps would: the blocks then run on the computing row alone. One more graph (batch 1),
    #    which serves row 1 and then row 0 (another storage offset, which static shapes do not guard).
    cache = TeaCache((1.0, 0.0), threshold=0.05, mode="e")
    model.step_cache = cache
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 3, 8, 8, generator=g)
    ctx = torch.randn(2, 7, TINY.text_dim, generator=g)
    with torch.inference_mode():
        cache.start_run(4)  # of 4 steps, so that step 2 is not the last (always computed)
        for step, t in enumerate(([500.0, 500.0], [500.001, 100.0], [100.0, 100.001])):
            cache.start_step(step)
            model(x, torch.tensor(t), ctx, branches=("cond", "uncond"))
    report = cache.end_run()
    assert [b.pattern for b in report.branches] == ["CSC", "CCS"]  # row 1 alone, then row 0 alone
    assert counter.graphs == 2

    # 3. A negative prompt of another length: the branches run one after the other, batch 1 each. The positive
    #    (7 text tokens) reuses the batch-1 graph of 2.; the negative (5 text tokens) compiles once more.
    model.step_cache = None
    TEACACHE.apply(model, CPU)  # the recipe's TeaCache again
    engine.sample(tiny_request(prompt_seed=1, seed=3, steps=STEPS, negative_tokens=5))
    engine.sample(tiny_request(prompt_seed=2, seed=4, steps=STEPS, negative_tokens=5))
    assert counter.graphs == 3

    # every compilation was announced, once, and nothing else was
    announced = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("compiling the", "new shape"))]
    assert len(announced) == counter.graphs
    assert "batch 2 x 48 video tokens x 7 text tokens" in announced[0]
    assert announced[1].startswith("new shape batch 1 x 48 video tokens x 7 text tokens: compiling")
    assert announced[2].startswith("new shape batch 1 x 48 video tokens x 5 text tokens: compiling")
