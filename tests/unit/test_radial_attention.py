"""Radial attention in the model on the CPU: the sparse layers against float64 masked attention with the mask of
the definition, the dense-first schedule (layers and steps), the per-step density in the sampler's summary, one
compiled graph per path whatever the step, and the config's checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
import torch
from torch._dynamo.utils import counters

from dax_core.accelerations import BuildEnv, apply_accelerations
from dax_core.attention import SDPA_DEFAULT
from dax_core.attention.block_sparse import bind_block_sparse
from dax_core.attention.radial import RadialAttention
from dax_core.attention.radial_config import RadialConfig
from dax_core.attention.registry import AttentionFn, BackendUnavailable
from dax_core.attention.schedule import DensityReport, SelfAttentionSchedule
from dax_core.compile import CompileConfig, compile_blocks
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanModel
from dax_core.parallel import ParallelConfig
from dax_core.recipe import Recipe, RecipeError
from dax_core.rules import check_recipe
from dax_core.runtime.engine import SampleRequest, WanEngine
from dax_core.runtime.sample_messages import result_fields, result_from_message
from dax_core.runtime.wire import Message
from tests.benchmarks.common import build_ours
from tests.numerics import rel_error
from tests.unit.test_compile import CountingBackend
from tests.unit.test_radial_mask import cover, oracle_mask

SPEC = WanSpec(dim=64, num_layers=3, num_heads=4, ffn_dim=128, text_dim=32, freq_dim=32)
LATENT = (1, 16, 12, 6, 8)  # 12 frames of 3 x 4 patches: 144 tokens, frames not filling blocks of 8
GRID = (12, 3, 4)
BLOCK = 8
RADIAL = RadialConfig(dense_steps=2, dense_layers=1, kernel="reference", block_size=BLOCK)
# The whole model in float32 either way; only the attention of the sparse layers is computed differently (float32
# logits over a block mask against float64 over a token mask): relative differences of order 1e-7 per layer.
F32_TOL = 1e-5
# The mask leaves out 28 % of the pairs of two of the three layers: the model's output moves by 1.1e-3 relative
# (measured; the gates of these random weights damp each layer's update). A mask that is not applied moves it by
# float32 rounding only (below 1e-6): the bound sits between, 10x from each.
MASK_MOVES_OUTPUT = 1e-4


def mask_tokens() -> torch.Tensor:
    return cover(oracle_mask(GRID, 0.2, BLOCK), BLOCK).repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)


def masked_attention_f64(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n = q.shape[1]
    qd, kd, vd = (x.double().transpose(1, 2) for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask_tokens()[:n, :n])
    return out.transpose(1, 2).to(q.dtype)


class ReferenceSchedule(SelfAttentionSchedule):
    """The schedule Radial attention should give outside a run, built from the definition: layer 0 dense, the
    others float64 attention over the token expansion of the definition's block cover."""

    def layer_kernels(self, grid, num_layers: int, dense: AttentionFn) -> Sequence[AttentionFn]:
        assert tuple(grid) == GRID
        return [dense] + [masked_attention_f64] * (num_layers - 1)

    def check_ring(self) -> None: ...

    def start_run(self, total_steps: int) -> None: ...

    def start_step(self, index: int) -> None: ...

    def end_run(self) -> DensityReport:
        return DensityReport("reference", ())


def model_with(config: RadialConfig | None, seed: int = 0) -> WanModel:
    model = build_ours(SPEC, "cpu", torch.float32, seed)
    recipe = Recipe("seeded", compute_dtype="fp32")
    if config is not None:
        recipe = recipe.with_acceleration(config)
    apply_accelerations(model, recipe, BuildEnv(torch.device("cpu")))
    return model


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(LATENT, generator=g), torch.tensor([700.0]), torch.randn(1, 7, SPEC.text_dim, generator=g)


@torch.no_grad()
def test_sparse_layers_equal_float64_attention_over_the_definitions_mask():
    x, t, ctx = inputs()
    radial = model_with(RADIAL)
    reference = model_with(None)
    reference.self_attention_schedule = ReferenceSchedule()
    dense = model_with(None)
    out, expected, plain = radial(x, t, ctx), reference(x, t, ctx), dense(x, t, ctx)
    assert rel_error(out, expected) < F32_TOL
    assert rel_error(out, plain) > MASK_MOVES_OUTPUT


@torch.no_grad()
def test_dense_steps_run_the_dense_kernel_and_each_step_reports_its_density():
    x, t, ctx = inputs()
    radial, dense = model_with(RADIAL), model_with(None)
    schedule = radial.self_attention_schedule
    schedule.start_run(4)
    schedule.start_step(0)
    assert torch.equal(radial(x, t, ctx), dense(x, t, ctx))
    schedule.start_step(2)
    sparse = radial(x, t, ctx)
    report = schedule.end_run()
    table_density = mask_tokens()[:144, :144].double().mean().item()
    assert report.densities[0] == 1.0 and report.densities[1] is None and report.densities[3] is None
    assert report.densities[2] == pytest.approx((1 + 2 * table_density) / 3)
    assert rel_error(sparse, dense(x, t, ctx)) > MASK_MOVES_OUTPUT


def test_the_sampler_summary_reports_the_density_of_every_step():
    model = model_with(RADIAL)
    g = torch.Generator().manual_seed(3)
    text = torch.randn(1, 7, SPEC.text_dim, generator=g)
    request = SampleRequest(text, -text, torch.zeros(LATENT), seed=5, steps=4, cfg=5.0, sampler="euler")
    result = WanEngine(model, Recipe("seeded", compute_dtype="fp32"), "cpu").sample(request)
    table_density = mask_tokens()[:144, :144].double().mean().item()
    sparse = (1 + 2 * table_density) / 3
    assert result.attention is not None
    assert result.attention.densities == pytest.approx((1.0, 1.0, sparse, sparse))
    mean = (1 + sparse) / 2
    expected = f"radial attention density per step: 1.00 x2, {sparse:.2f} x2 ({mean:.2f} of dense attention"
    assert result.summary_lines()[-1] == expected + " over the run)"
    fields, tensors = result_fields(result)
    again = result_from_message(Message("result", fields, tensors))
    assert again.attention == result.attention


def test_a_schedule_keeping_every_step_dense_says_so(caplog):
    model = model_with(RadialConfig(dense_steps=4, kernel="reference", block_size=BLOCK))
    with caplog.at_level("WARNING"):
        model.self_attention_schedule.start_run(4)
    assert "keeps all 4 steps dense" in caplog.text and "1 of a 4-step distilled run" in caplog.text
    assert (
        DensityReport("radial attention", (1.0, None))
        .summary()
        .endswith("1.00 x1, skipped x1 (1.00 of dense attention over the run)")
    )


@pytest.mark.usefixtures("fresh_dynamo")
@torch.no_grad()
def test_compiled_blocks_keep_one_graph_per_path_at_every_step():
    x, t, ctx = inputs()
    eager = model_with(RADIAL)
    model = model_with(RADIAL)
    counter = CountingBackend()
    compile_blocks(model, CompileConfig(), backend=counter)
    graphs = []
    for steps in ((0, 1, 2), (0, 2)):  # a run, then the next run: dense steps again, then sparse
        for m in (model, eager):
            m.self_attention_schedule.start_run(3)
        for step in steps:
            for m in (model, eager):
                m.self_attention_schedule.start_step(step)
            assert rel_error(model(x, t, ctx), eager(x, t, ctx)) < F32_TOL
            graphs.append(counter.graphs)
    assert dict(counters["graph_break"]) == {}
    assert graphs == [1, 1, 2, 2, 2], graphs  # the dense path, then the sparse path; nothing more at any step


def test_config_checks_say_what_to_change():
    for bad, match in [
        ({"dense_steps": -1}, "dense_steps must be a whole number"),
        ({"dense_layers": True}, "dense_layers must be a whole number"),
        ({"decay_factor": 0}, "decay_factor must be a positive number"),
        ({"decay_factor": float("nan")}, "decay_factor must be a positive number"),
        ({"kernel": "dense"}, "unknown radial kernel 'dense'; choose one of auto, sparge, flex, reference"),
        ({"block_size": 0}, "block_size must be a positive"),
    ]:
        with pytest.raises(RecipeError, match=match):
            RadialConfig(**bad)
    recipe = Recipe("w.safetensors").with_acceleration(RadialConfig(dense_steps=1, kernel="flex"))
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert RadialConfig() == RadialConfig(
        dense_steps=12, dense_layers=1, decay_factor=0.2, kernel="auto", block_size=128
    )


def test_kernels_that_cannot_run_are_refused_before_sampling():
    with pytest.raises(BackendUnavailable, match=r"spas_sage_attn|CUDA"):
        model_with(RadialConfig(kernel="sparge"))
    ring = ParallelConfig(2, ulysses=1, ring=2)
    sparge = Recipe("w.safetensors").with_acceleration(RadialConfig(kernel="sparge"))
    with pytest.raises(ValueError, match=r"sparge kernel returns no log-sum-exp.*Ulysses only"):
        check_recipe(sparge, SPEC, ring)
    check_recipe(sparge, SPEC, ParallelConfig(2, ulysses=2))
    check_recipe(Recipe("w.safetensors").with_acceleration(RadialConfig()), SPEC, ring)
    model = model_with(RADIAL)
    model.self_attention_schedule.ring_kernel = None
    with pytest.raises(ValueError, match="choose the radial kernel auto or flex"):
        model.self_attention_schedule.check_ring()
    assert model.self_attn_fn is SDPA_DEFAULT  # radial attention leaves the dense kernel to the attention backend


def test_auto_gives_a_video_too_small_for_its_kernel_to_the_ring_kernel():
    """SpargeAttn takes at least 128 tokens: with auto a smaller video runs the kernel ring attention would use;
    a kernel chosen by name refuses it, saying which kernels take it."""
    reference = bind_block_sparse("reference", "cpu", torch.float32, BLOCK)
    picky = dataclasses.replace(reference, name="picky", kernel="a kernel of 1000 tokens or more", min_tokens=1000)
    auto = RadialAttention(2, 1, 0.2, BLOCK, picky, reference, "cpu", chosen_by_auto=True)
    assert auto.attention_for(GRID).kernel is reference
    named = RadialAttention(2, 1, 0.2, BLOCK, picky, reference, "cpu")
    with pytest.raises(ValueError, match="needs at least 1000 video tokens, this video has 144: use the flex or"):
        named.attention_for(GRID)


def test_cuda_graphs_refuse_radial_attention_before_any_capture():
    """A graph replays the kernels it captured, while radial attention switches them between the dense steps and
    the sparse ones: refused when graphs are enabled, and before a capture if radial attention came later."""
    from dax_core.compile.cuda_graphs import enable_cuda_graphs

    with pytest.raises(RecipeError, match="radial attention changes the self-attention kernels from step to step"):
        enable_cuda_graphs(model_with(RADIAL))
    model = model_with(None)
    graphs = enable_cuda_graphs(model, capture=lambda fn, warmup: (lambda: None, fn()))
    RADIAL.apply(model, BuildEnv(torch.device("cpu")))
    with pytest.raises(RecipeError, match="turn cuda_graphs off in the Compile node, or drop radial attention"):
        graphs.run(model.prepare(*inputs()))
    assert graphs.captures == 0


def test_a_run_cut_by_start_at_step_counts_the_dense_steps_from_the_schedules_start():
    """As the second expert of a chain: steps 2 and 3 of a 4-step schedule, past the 2 dense steps: both sparse."""
    model = model_with(RADIAL)
    g = torch.Generator().manual_seed(4)
    text = torch.randn(1, 7, SPEC.text_dim, generator=g)
    request = SampleRequest(text, -text, torch.zeros(LATENT), seed=5, steps=4, cfg=5.0, sampler="euler",
                            start_at_step=2)  # fmt: skip
    result = WanEngine(model, Recipe("seeded", compute_dtype="fp32"), "cpu").sample(request)
    sparse = (1 + 2 * mask_tokens()[:144, :144].double().mean().item()) / 3
    assert result.steps == 2 and result.attention.densities == pytest.approx((sparse, sparse))
