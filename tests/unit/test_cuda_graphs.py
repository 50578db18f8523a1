"""CUDA graphs of the block stack: the bookkeeping around the capture, on the CPU.

A stand-in capture records the stack function and replays it into the same output buffer, as a graph would: from
the static input buffers only. So a replay that gave the right output read inputs that were copied in, and a caller
whose earlier output survived a later call got a copy. The graph itself is compared with eager bit for bit in the
GPU tier (tests/gpu/test_graph_replay_cuda.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dax_core.accelerations import BuildEnv
from dax_core.cache.teacache import TeaCache
from dax_core.compile import CompileConfig
from dax_core.compile.cuda_graphs import disable_cuda_graphs, enable_cuda_graphs
from dax_core.parallel import ParallelConfig
from dax_core.quant import quantize_dynamic
from dax_core.quant.config import QuantizeConfig
from dax_core.recipe import Recipe, RecipeError
from dax_core.rules import check_recipe
from dax_core.runtime.engine import WanEngine
from tests.unit.tiny_wan import TINY, tiny_model, tiny_request


class StandInCapture:
    """Like ``CudaGraphCapture``: ``warmup`` plain calls, one recorded call, and a replay that refills its output."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.warmups = 0

    def __call__(self, fn, warmup):
        for _ in range(warmup):
            fn()
            self.warmups += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        out = fn()
        return (lambda: out.copy_(fn())), out


def _inputs(seed: int, frames: int = 3):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 16, frames, 8, 8, generator=g),
        torch.tensor([500.0 + seed]),
        torch.randn(1, 7, 32, generator=g),
    )


@torch.no_grad()
def test_replays_read_each_call_s_inputs_and_return_outputs_the_caller_owns():
    model = tiny_model()
    eager = [model(*_inputs(s)) for s in range(3)]
    graphs = enable_cuda_graphs(model, StandInCapture())
    replayed = [model(*_inputs(s)) for s in range(3)]
    assert graphs.captures == 1  # one shape
    for a, b in zip(eager, replayed, strict=True):
        assert torch.equal(a, b)  # the first output survived the later replays: it is a copy


@torch.no_grad()
def test_a_new_shape_captures_once_more_and_a_known_one_does_not():
    model = tiny_model()
    graphs = enable_cuda_graphs(model, StandInCapture())
    for frames in (3, 5, 3, 5):
        model(*_inputs(0, frames))
    assert graphs.captures == 2 and len(graphs.graphs) == 2


@torch.no_grad()
def test_changed_attention_or_weights_capture_again():
    model = tiny_model()
    graphs = enable_cuda_graphs(model, StandInCapture())
    model(*_inputs(0))
    model.set_attention(lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2))  # fmt: skip
    model(*_inputs(0))
    assert graphs.captures == 2
    quantize_dynamic(model, QuantizeConfig(dtype="int8").qconfig_dict())  # new weight tensors: the graphs read old ones
    quantized = model(*_inputs(1))
    assert graphs.captures == 3 and len(graphs.graphs) == 1  # the stale graphs are dropped
    disable_cuda_graphs(model)
    assert torch.equal(quantized, model(*_inputs(1)))


@torch.no_grad()
def test_a_step_cache_runs_outside_the_graphs_and_samples_the_same():
    def sample(graphs: bool):
        engine = WanEngine(tiny_model(), Recipe("unused.safetensors"), "cpu")
        engine.model.step_cache = TeaCache((1.0, 0.0), 2.0, mode="e")
        if graphs:
            enable_cuda_graphs(engine.model, StandInCapture())
        return engine.sample(tiny_request(cfg=5.0, negative_tokens=7)), engine.model.block_graphs

    plain, _ = sample(False)
    graphed, graphs = sample(True)
    assert graphed.step_cache.branch("cond").skipped > 0  # some steps reuse the residual, some compute
    assert graphed.step_cache.branch("cond").pattern == plain.step_cache.branch("cond").pattern
    assert torch.equal(graphed.latent, plain.latent)
    assert graphs.captures >= 1


@torch.no_grad()
def test_a_capture_that_fails_says_what_to_turn_off_and_leaves_no_graph():
    model = tiny_model()
    graphs = enable_cuda_graphs(model, StandInCapture(fail=True))
    with pytest.raises(RuntimeError, match="turn cuda_graphs off in the Compile node"):
        model(*_inputs(0))
    assert not graphs.graphs


def test_cuda_graphs_are_refused_where_they_cannot_run():
    config = CompileConfig(backend="aot_eager", cuda_graphs=True)
    assert Recipe.from_dict(Recipe("w.safetensors", accelerations=(config,)).to_dict()).accelerations == (config,)
    with pytest.raises(RecipeError, match="need a CUDA GPU"):
        config.apply(tiny_model(), BuildEnv(torch.device("cpu")))
    recipe = Recipe("w.safetensors").with_acceleration(config)
    with pytest.raises(RecipeError, match="on 2 GPUs"):
        check_recipe(recipe, TINY, ParallelConfig(world_size=2, ulysses=2))
    model = tiny_model()
    model.sequence_parallel = object()  # any plan
    with pytest.raises(RuntimeError, match="sequence-parallel"):
        enable_cuda_graphs(model, StandInCapture())
    with pytest.raises(RecipeError, match="true or false"):
        CompileConfig(cuda_graphs="yes")


def test_attention_a_graph_cannot_record_is_refused_before_any_capture():
    from dax_core.attention import SDPA_DEFAULT

    legacy_stream = replace(SDPA_DEFAULT, kernel="a kernel on CUDA's legacy stream", capturable=False)
    model = tiny_model()
    model.set_attention(legacy_stream)
    with pytest.raises(RecipeError, match="cannot record the self-attention kernel, a kernel on CUDA's legacy"):
        enable_cuda_graphs(model, StandInCapture())
    model.set_attention(SDPA_DEFAULT)
    capture = StandInCapture()
    graphs = enable_cuda_graphs(model, capture)
    model.set_attention(SDPA_DEFAULT, legacy_stream)  # changed after graphs were turned on
    with torch.no_grad(), pytest.raises(RecipeError, match="cross-attention"):
        model(*_inputs(0))
    assert graphs.captures == 0 and capture.warmups == 0
