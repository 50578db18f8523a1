"""TeaCache on a tiny Wan model: exactness at threshold 0, block-stack counts, per-branch state, run isolation."""

from __future__ import annotations

import pytest
import torch

from dax_core.cache.coefficients import rescale
from dax_core.cache.teacache import TeaCache
from dax_core.models.wan import WanModel
from tests.unit.tiny_wan import TINY, tiny_engine, tiny_model, tiny_request


class BlockStackCounter:
    """Counts block-stack evaluations (block 0 runs once per evaluation) and the rows each one saw."""

    def __init__(self, model: WanModel) -> None:
        self.rows: list[int] = []
        self._handle = model.blocks[0].register_forward_hook(lambda _m, args, _out: self.rows.append(args[0].shape[0]))

    def remove(self) -> None:
        self._handle.remove()


def test_threshold_zero_gives_exactly_the_uncached_latent():
    engine = tiny_engine()
    req = tiny_request()
    plain = engine.sample(req).latent
    engine.model.step_cache = TeaCache((1.0, 0.0), threshold=0.0, mode="e")
    cached = engine.sample(req)
    assert torch.equal(cached.latent, plain)  # same ops in the same order: bit-identical
    assert [b.pattern for b in cached.step_cache.branches] == ["C" * 12, "C" * 12]


@pytest.mark.parametrize(
    ("mode", "pattern"),
    [
        # rescale = 1 per step against threshold 2.5: two skips, then the sum reaches 3 and the stack runs
        ("e", "CSSCSSCSSCSC"),  # first step forced, last step forced
        ("e0", "CCCCCSSCSSCC"),  # five retention steps forced, last step forced
    ],
)
def test_skipping_k_steps_runs_the_block_stack_exactly_steps_minus_k_times(mode, pattern):
    engine = tiny_engine()
    engine.model.step_cache = TeaCache((1.0,), threshold=2.5, mode=mode)  # a constant polynomial
    counter = BlockStackCounter(engine.model)
    result = engine.sample(tiny_request(steps=12))
    counter.remove()
    assert [b.pattern for b in result.step_cache.branches] == [pattern, pattern]
    assert counter.rows == [2] * pattern.count("C")  # cond + uncond batched: one call of 2 rows per computed step
    skipped = pattern.count("S")
    assert result.step_cache.implied_speedup == pytest.approx(12 / (12 - skipped))
    assert f"cond {skipped}/12" in result.summary() and f"uncond {skipped}/12" in result.summary()


def test_max_consecutive_skips_and_the_start_end_window():
    engine = tiny_engine()
    engine.model.step_cache = TeaCache((0.0,), threshold=1.0, mode="e", max_consecutive_skips=2)  # always under
    assert engine.sample(tiny_request(steps=10)).step_cache.branch("cond").pattern == "CSSCSSCSSC"
    engine.model.step_cache = TeaCache((0.0,), threshold=1.0, mode="e", start=0.3, end=0.8)
    assert engine.sample(tiny_request(steps=10)).step_cache.branch("cond").pattern == "CCCSSSSSCC"


@torch.no_grad()
def _reference_e(model: WanModel, timestep: float) -> torch.Tensor:
    """Wan's time embedding in float64, written out from the weights (independent of WanModel.prepare)."""
    half = TINY.freq_dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    angles = timestep * freqs
    h = torch.cat([angles.cos(), angles.sin()])
    l0, l2 = model.time_embedding[0], model.time_embedding[2]
    h = torch.nn.functional.silu(l0.weight.double() @ h + l0.bias.double())
    return l2.weight.double() @ h + l2.bias.double()


def test_decisions_follow_a_float64_reference_of_the_time_embedding_change():
    engine = tiny_engine()
    coefficients = (0.5, 0.2)  # rescale(x) = 0.5 x + 0.2
    cache = TeaCache(coefficients, threshold=1.1, mode="e")
    engine.model.step_cache = cache
    distances: list[float] = []
    decide = cache.policy.decide

    def recording(inputs, forced):
        out = decide(inputs, forced)
        distances.append(cache.policy.track("cond").distance)
        return out

    cache.policy.decide = recording
    req = tiny_request(steps=12)
    result = engine.sample(req)

    from dax_core.runtime.schedules import flow_sigmas, sigma_to_timestep

    ts = [sigma_to_timestep(float(s)) for s in flow_sigmas(req.scheduler, req.steps, req.shift)[:-1]]
    es = [_reference_e(engine.model, t) for t in ts]
    pattern, acc, margins = "", 0.0, []
    for i in range(len(ts)):
        if i == 0 or i == len(ts) - 1:
            pattern, acc = pattern + "C", 0.0
            continue
        d = float((es[i] - es[i - 1]).abs().sum() / es[i - 1].abs().sum())
        # the model's float32 embedding: distances agree with float64 to ~1e-6 relative
        assert distances[i] == pytest.approx(d, rel=1e-5)
        acc += rescale(coefficients, d)
        margins.append(abs(acc - 1.1))
        pattern, acc = (pattern + "S", acc) if acc < 1.1 else (pattern + "C", 0.0)
    assert min(margins) > 1e-3  # no decision sits on the threshold, so float32 vs float64 cannot flip one
    assert "S" in pattern and pattern.count("C") > 2  # the reference exercises both outcomes
    assert result.step_cache.branch("cond").pattern == pattern
    assert result.step_cache.branch("uncond").pattern == pattern


def _inputs(batch: int, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 3, 8, 8, generator=g)
    ctx = torch.randn(batch, 7, TINY.text_dim, generator=g)
    return x, ctx


@torch.inference_mode()
def test_branches_that_disagree_run_the_blocks_on_their_own_rows_only():
    model = tiny_model()
    x0, ctx = _inputs(2)
    x1 = x0 + 0.05 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    cache = TeaCache((1.0, 0.0), threshold=0.05, mode="e")
    model.step_cache = cache
    counter = BlockStackCounter(model)
    x2 = x1 + 0.05 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(10))
    t0, t1, t2 = torch.tensor([500.0, 500.0]), torch.tensor([500.001, 100.0]), torch.tensor([100.0, 100.001])
    cache.start_run(4)
    cache.start_step(0)  # both rows computed in one call
    model(x0, t0, ctx, branches=("cond", "uncond"))
    cache.start_step(1)  # "cond" barely moves in time (skips), "uncond" jumps (computes): the stack runs on row 1
    out1 = model(x1, t1, ctx, branches=("cond", "uncond"))
    cache.start_step(2)  # the other way round: the stack runs on row 0; "uncond" reuses its step-1 residual
    out2 = model(x2, t2, ctx, branches=("cond", "uncond"))
    counter.remove()
    assert counter.rows == [2, 1, 1]
    report = cache.end_run()
    assert report.branch("cond").pattern == "CSC" and report.branch("uncond").pattern == "CCS"

    model.step_cache = None
    p0, p1, p2 = (model.prepare(x, t, ctx) for x, t in ((x0, t0), (x1, t1), (x2, t2)))
    cond, uncond = slice(0, 1), slice(1, 2)
    residual_cond = model.run_blocks(p0)[cond] - p0.tokens[cond]
    skipped = model.finish(p1.tokens[cond] + residual_cond, p1.select(cond))
    assert torch.equal(out1[cond], skipped)  # the cond row is its input plus its own step-0 residual
    # the uncond row alone through the stack, as the cache ran it: the same batch of one, bit for bit
    h_uncond = model.run_blocks(p1.select(uncond))
    assert torch.equal(out1[uncond], model.finish(h_uncond, p1.select(uncond)))
    residual_uncond = h_uncond - p1.tokens[uncond]
    assert torch.equal(out2[uncond], model.finish(p2.tokens[uncond] + residual_uncond, p2.select(uncond)))
    # against a plain forward of the whole batch: a batch of one may take other GEMM blockings, float32 rounding
    torch.testing.assert_close(out1[uncond], model(x1, t1, ctx)[uncond], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out2[cond], model(x2, t2, ctx)[cond], rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_rows_of_one_branch_need_not_be_contiguous():
    model = tiny_model()
    x, ctx = _inputs(3)
    cache = TeaCache((1.0, 0.0), threshold=10.0, mode="e")  # skips whatever the window allows
    model.step_cache = cache
    cache.start_run(3)
    cache.start_step(0)
    t = torch.tensor([900.0, 900.0, 900.0])
    model(x, t, ctx, branches=("a", "b", "a"))
    cache.start_step(1)
    t = torch.tensor([800.0, 800.0, 800.0])
    out = model(x, t, ctx, branches=("a", "b", "a"))
    model.step_cache = None
    p0, p1 = model.prepare(x, torch.full((3,), 900.0), ctx), model.prepare(x, t, ctx)
    expected = model.finish(p1.tokens + (model.run_blocks(p0) - p0.tokens), p1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)  # residual reuse on every row, rows kept apart
    assert [b.pattern for b in cache.end_run().branches] == ["CS", "CS"]


def test_unbatched_branches_keep_their_own_state_too():
    # negative text of another length: the engine calls the model once per branch
    req = tiny_request(negative_tokens=5)
    engine = tiny_engine()
    plain = engine.sample(req).latent
    engine.model.step_cache = TeaCache((1.0,), threshold=0.0, mode="e")
    assert torch.equal(engine.sample(req).latent, plain)
    engine.model.step_cache = TeaCache((1.0,), threshold=2.5, mode="e")
    counter = BlockStackCounter(engine.model)
    result = engine.sample(req)
    counter.remove()
    assert [b.pattern for b in result.step_cache.branches] == ["CSSCSSCSSCSC"] * 2
    assert counter.rows == [1] * (2 * 5)  # one row per call, two calls per computed step


def test_two_runs_in_a_row_equal_two_fresh_runs():
    first, second = tiny_request(prompt_seed=1, seed=3), tiny_request(prompt_seed=2, seed=4)
    engine = tiny_engine()
    engine.model.step_cache = TeaCache((1.0, 0.0), threshold=2.0, mode="e")
    a, b = engine.sample(first), engine.sample(second)
    assert "S" in a.step_cache.branch("cond").pattern  # the runs really reuse residuals
    for req, got in ((first, a), (second, b)):
        fresh = tiny_engine()
        fresh.model.step_cache = TeaCache((1.0, 0.0), threshold=2.0, mode="e")
        want = fresh.sample(req)
        assert torch.equal(got.latent, want.latent)
        assert got.step_cache == want.step_cache


def test_a_cancelled_run_leaves_nothing_behind():
    engine = tiny_engine()
    cache = TeaCache((1.0,), threshold=2.5, mode="e")
    engine.model.step_cache = cache

    def cancel(i, _total, _x):
        if i == 4:
            raise KeyboardInterrupt  # what an interrupted workflow raises through the step callback

    with pytest.raises(KeyboardInterrupt):
        engine.sample(tiny_request(prompt_seed=7), on_step=cancel)
    assert cache.step is None and cache.cached_residual("cond") is None  # residuals released
    req = tiny_request()
    fresh = tiny_engine()
    fresh.model.step_cache = TeaCache((1.0,), threshold=2.5, mode="e")
    assert torch.equal(engine.sample(req).latent, fresh.sample(req).latent)


@torch.inference_mode()
def test_misuse_is_reported():
    model = tiny_model()
    x, ctx = _inputs(2)
    t = torch.tensor([500.0, 500.0])
    cache = TeaCache((1.0,), threshold=0.1)
    model.step_cache = cache
    with pytest.raises(RuntimeError, match="outside a sampling run"):
        model(x, t, ctx)
    cache.start_run(3)
    cache.start_step(0)
    with pytest.raises(ValueError, match="got 1 branch names for a batch of 2"):
        model(x, t, ctx, branches=("cond",))
    model(x, t, ctx, branches=("cond", "uncond"))
    with pytest.raises(RuntimeError, match="evaluated twice in step 0"):
        model(x, t, ctx, branches=("cond", "uncond"))
    with pytest.raises(ValueError, match="steps must increase"):
        cache.start_step(0)
    with pytest.raises(ValueError, match="outside the run's 3 steps"):
        cache.start_step(3)
    with pytest.raises(ValueError, match="mode 'x'"):
        TeaCache((1.0,), threshold=0.1, mode="x")


def test_start_run_forgets_a_run_that_never_ended():
    engine = tiny_engine()
    cache = TeaCache((1.0,), threshold=2.5, mode="e")
    engine.model.step_cache = cache
    x, ctx = _inputs(2)
    cache.start_run(12)
    for i in range(3):  # a run abandoned without end_run: residuals, sums and patterns left behind
        cache.start_step(i)
        with torch.inference_mode():
            engine.model(x, torch.full((2,), 900.0 - i), ctx, branches=("cond", "uncond"))
    req = tiny_request()
    fresh = tiny_engine()
    fresh.model.step_cache = TeaCache((1.0,), threshold=2.5, mode="e")
    got, want = engine.sample(req), fresh.sample(req)
    assert torch.equal(got.latent, want.latent)
    assert got.step_cache == want.step_cache
