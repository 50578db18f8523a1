"""``QuantizeConfig.input_kernels="dax"``: the 8-bit linears' inputs quantized by DAX's kernels as custom ops.

On the CPU the ops run their PyTorch definitions, so the model must compute exactly what the default path computes;
what is checked is the wiring (which norms return only quantized rows, which layers take them, GELU and ffn.2's
quantization in one op), that torch.compile traces the ops as single nodes of one graph, and the ops' schemas and
fake shapes. The kernels' values are checked in Triton's interpreter and on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from dax_core.accelerations import BuildEnv, apply_accelerations
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanModel
from dax_core.quant import kernel_ops
from dax_core.quant.config import QuantizeConfig
from dax_core.quant.fused_inputs import GeluQuantFfn
from dax_core.quant.kernel_ops import QuantizedRows
from dax_core.quant.linear import QuantLinear
from dax_core.recipe import Recipe, RecipeError
from tests.unit.tiny_wan import fill_checkpoint_like_

SPEC = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=32, freq_dim=32)
E4M3 = torch.float8_e4m3fn


def _model(input_kernels: str, dtype: str = "fp8") -> WanModel:
    model = fill_checkpoint_like_(WanModel(SPEC, dtype=torch.float32))
    recipe = Recipe.from_dict(
        {"weights": "random", "accelerations": [{"kind": "quantize", "dtype": dtype, "input_kernels": input_kernels}]}
    )
    apply_accelerations(model, recipe, BuildEnv(torch.device("cpu")))
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 16, 3, 8, 8, generator=g), torch.tensor([600.0]), torch.randn(1, 7, 32, generator=g)


class OpCounter:
    """A torch.compile backend that records the custom ops in each graph and runs it as traced."""

    def __init__(self) -> None:
        self.ops: list[str] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.ops += [str(n.target) for n in gm.graph.nodes if n.op == "call_function" and "dax." in str(n.target)]
        return gm.forward


def test_the_config_validates_and_round_trips():
    config = QuantizeConfig(input_kernels="dax")
    assert QuantizeConfig(**{k: v for k, v in config.to_dict().items() if k != "kind"}) == config
    assert config.to_dict()["input_kernels"] == "dax" and QuantizeConfig().input_kernels == "dax"
    with pytest.raises(RecipeError, match="input_kernels 'triton' is not one of default, dax"):
        QuantizeConfig(input_kernels="triton")


@pytest.mark.parametrize("dtype", ["fp8", "int8"])
def test_the_model_computes_what_the_default_path_computes(dtype):
    default, dax = _model("default", dtype), _model("dax", dtype)
    assert all(b.input_kernels is None for b in default.blocks)
    assert all(isinstance(b.input_kernels, kernel_ops.QuantizingNorms) for b in dax.blocks)
    linears = [m for b in dax.blocks for m in b.modules() if isinstance(m, (QuantLinear, GeluQuantFfn))]
    assert linears and all(m.input_ops for m in linears)
    with torch.no_grad():
        assert torch.equal(dax(*_inputs()), default(*_inputs()))  # the same definitions of the same values


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_blocks_hold_the_ops_as_single_nodes_and_compute_what_eager_does():
    from torch._dynamo.utils import counters

    model = _model("dax")
    with torch.no_grad():
        eager = model(*_inputs())
        backend = OpCounter()
        for block in model.blocks:
            block.compile(backend=backend, fullgraph=True)
        compiled = model(*_inputs())
    assert torch.equal(compiled, eager)
    assert counters["graph_break"] == {}
    # one graph serves both blocks: 3 norms; o, cross k, v, o quantized in one op each; GELU with ffn.2's quantization
    assert sorted(backend.ops) == sorted(["dax.norm_quantize.default"] * 3 + ["dax.quantize_rows.default"] * 5)


def test_the_ops_schemas_and_fake_shapes_match_their_cpu_definitions():
    g = torch.Generator().manual_seed(2)
    x, r = torch.randn(2, 5, 64, generator=g).bfloat16(), torch.randn(2, 5, 64, generator=g).bfloat16()
    shift, scale, gate = (torch.randn(2, 1, 64, generator=g) for _ in range(3))
    w, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    # test_schema compares outputs with arithmetic PyTorch's CPU lacks for float8: int8 there, fp8 for the rest
    for dtype, tests in ((torch.int8, None), (E4M3, ("test_faketensor", "test_aot_dispatch_dynamic"))):
        kw = {} if tests is None else {"test_utils": tests}
        torch.library.opcheck(kernel_ops.norm_quantize, (x, None, None, shift, scale, 1e-6, False, dtype), **kw)
        torch.library.opcheck(kernel_ops.norm_quantize, (x, r, None, shift, scale, 1e-6, False, dtype), **kw)
        torch.library.opcheck(kernel_ops.norm_quantize, (x, r, gate, w, b, 1e-6, True, dtype), **kw)
        torch.library.opcheck(kernel_ops.quantize_rows, (x.reshape(10, 64), dtype, True), **kw)


def test_a_linear_refuses_rows_quantized_to_another_dtype():
    layer = _model("dax", "int8").blocks[0].self_attn.q
    x = torch.randn(3, 64)
    rows = QuantizedRows(*kernel_ops.quantize_rows(x, E4M3, False), tuple(x.shape), x.dtype)
    with pytest.raises(ValueError, match=r"given rows quantized to torch\.float8_e4m3fn"):
        layer(rows)
    rows = QuantizedRows(*kernel_ops.quantize_rows(x, torch.int8, False), tuple(x.shape), x.dtype)
    assert torch.equal(layer(rows), layer(x))
