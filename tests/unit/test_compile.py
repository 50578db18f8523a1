"""Regional compilation: compiled equals eager, and the compile count stays where it should."""

from __future__ import annotations

import logging

import pytest
import torch

from dax_core.compile import CompileConfig, compile_blocks, uncompile_blocks
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanModel
from dax_core.recipe import Recipe, RecipeError
from dax_core.runtime.engine import SampleRequest, WanEngine
from tests.numerics import rel_error

pytestmark = pytest.mark.usefixtures("fresh_dynamo")

SPEC = WanSpec(dim=64, num_layers=4, num_heads=4, ffn_dim=128, text_dim=32)


def _model(seed: int = 0) -> WanModel:
    g = torch.Generator().manual_seed(seed)
    model = WanModel(SPEC, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them as traced."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return gm.forward


def _request(seed: int, text_len: int = 5, cfg: float = 5.0, steps: int = 3) -> SampleRequest:
    g = torch.Generator().manual_seed(100 + seed)
    return SampleRequest(
        positive=torch.randn(1, text_len, SPEC.text_dim, generator=g),
        negative=torch.randn(1, text_len, SPEC.text_dim, generator=g),
        latent=torch.zeros(1, 16, 2, 4, 6),
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler="wan_unipc",
    )


def test_one_graph_serves_every_block_step_branch_and_prompt():
    model = _model()
    counter = CountingBackend()
    compile_blocks(model, CompileConfig(), backend=counter)
    engine = WanEngine(model, Recipe("unused.safetensors"), "cpu")
    engine.sample(_request(0))  # 3 steps x 4 blocks, cond and uncond batched
    engine.sample(_request(1))  # another prompt, same shapes
    assert counter.graphs == 1
    # a new resolution compiles exactly once more, and then is reused
    bigger = SampleRequest(**{**_request(2).__dict__, "latent": torch.zeros(1, 16, 2, 6, 6)})
    engine.sample(bigger)
    engine.sample(bigger)
    assert counter.graphs == 2


def test_inductor_compiled_blocks_match_eager():
    model = _model(1)
    x = torch.randn(2, 16, 2, 4, 6)
    t = torch.tensor([900.0, 20.0])
    ctx = torch.randn(2, 7, SPEC.text_dim)
    with torch.no_grad():
        eager = model(x, t, ctx)
        compile_blocks(model, CompileConfig(backend="inductor"))
        compiled = model(x, t, ctx)
        uncompile_blocks(model)
        again = model(x, t, ctx)
    # float32 with fused (reassociated) reductions: ~1e-6; a mistraced op would be O(1)
    rel = rel_error(compiled, eager)
    assert rel < 1e-5
    assert torch.equal(again, eager)


def test_config_validation_says_what_to_change():
    with pytest.raises(RecipeError, match="mode 'turbo'"):
        CompileConfig(mode="turbo")
    with pytest.raises(RecipeError, match="needs the inductor backend"):
        CompileConfig(mode="max-autotune-no-cudagraphs", backend="eager")


def test_compile_config_round_trips_in_a_recipe():
    recipe = Recipe("m.safetensors").with_acceleration(CompileConfig(mode="max-autotune-no-cudagraphs"))
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_first_step_time_is_reported():
    model = _model()
    compile_blocks(model, CompileConfig(backend="eager"))
    result = WanEngine(model, Recipe("unused.safetensors"), "cpu").sample(_request(0, steps=2))
    assert 0 < result.first_step_seconds <= result.seconds
    assert "first step" in result.summary()


def _forward(model: WanModel, batch: int, height: int = 4, text: int = 5) -> None:
    g = torch.Generator().manual_seed(batch * 100 + height * 10 + text)
    x = torch.randn(batch, 16, 2, height, 6, generator=g)
    with torch.no_grad():
        model(x, torch.full((batch,), 500.0), torch.randn(batch, text, SPEC.text_dim, generator=g))


def _announced(caplog) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "dax_core.compile.regional"]
    return [line for line in lines if line.startswith(("compiling the", "new shape"))]


def test_every_compilation_is_announced_in_one_line(caplog):
    caplog.set_level(logging.INFO, logger="dax_core.compile")
    model = _model()
    counter = CountingBackend()
    compile_blocks(model, CompileConfig(), backend=counter)
    _forward(model, batch=2)
    _forward(model, batch=2)  # the same shape: nothing compiles, nothing is said
    _forward(model, batch=1)
    _forward(model, batch=1, height=6, text=9)
    assert counter.graphs == 3
    assert _announced(caplog) == [
        "compiling the transformer block for batch 2 x 12 video tokens x 5 text tokens "
        "(CountingBackend, static shapes); all 4 blocks share its graph",
        "new shape batch 1 x 12 video tokens x 5 text tokens: compiling the transformer block once more "
        "(2 shapes so far)",
        "new shape batch 1 x 18 video tokens x 9 text tokens: compiling the transformer block once more "
        "(3 shapes so far)",
    ]
    uncompile_blocks(model)
    caplog.clear()
    _forward(model, batch=3)
    assert _announced(caplog) == [] and counter.graphs == 3


def test_dynamic_shapes_serve_every_block_and_new_sizes_with_one_graph(caplog):
    """The tokens enter the blocks row-major, not as a transposed view of the patch embedding: a view is guarded on
    its base, which block 2's input (block 1's output) does not have, so block 1 used to compile alone."""
    caplog.set_level(logging.INFO, logger="dax_core.compile")
    model = _model()  # float32: the compute-dtype cast is no copy, so only the layout change makes one
    counter = CountingBackend()
    compile_blocks(model, CompileConfig(dynamic=True), backend=counter)
    _forward(model, batch=2)
    _forward(model, batch=3, height=6, text=9)
    assert counter.graphs == 1
    assert _announced(caplog)[1] == (
        "new shape batch 3 x 18 video tokens x 9 text tokens: the dynamic-shape graph takes it unless a size of "
        "0 or 1 needs its own"
    )
