"""torch.compile(fullgraph=True) over attention: SDPA traces as is, opaque kernels stay one custom-op node."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from dax_core.attention import BackendUnavailable, BoundAttention, available_backends, bind_attention
from dax_core.attention.custom_op import attention_op, no_lse
from dax_core.attention.exact import exact_attention_lse
from dax_core.models.rope import rope_cos_sin
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanBlock

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def untraceable_attention(q, k, v, scale, return_lse):
    """Stands in for a kernel dynamo cannot trace (a compiled extension, a launcher doing host work)."""
    torch._dynamo.graph_break()
    out, lse = exact_attention_lse(q, k, v, scale)
    return out.contiguous(), (lse if return_lse else no_lse(q))


@attention_op("dax_test::opaque_attention")
def opaque_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, return_lse: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return untraceable_attention(q, k, v, scale, return_lse)


OPAQUE = BoundAttention(
    backend="opaque",
    kernel="a custom-op-wrapped kernel dynamo cannot trace",
    run=lambda q, k, v, scale: opaque_attention(q, k, v, scale, False)[0],
    run_lse=lambda q, k, v, scale: opaque_attention(q, k, v, scale, True),
)


def _inputs():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 24, 2, 8, generator=g) for _ in range(3)]


def _compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_the_stand_in_kernel_really_breaks_the_graph_without_the_custom_op():
    with pytest.raises(torch._dynamo.exc.Unsupported):
        torch.compile(lambda q, k, v: untraceable_attention(q, k, v, None, False)[0], fullgraph=True)(*_inputs())


def test_a_custom_op_kernel_compiles_fullgraph_with_inductor():
    q, k, v = _inputs()
    compiled = torch.compile(lambda q, k, v: OPAQUE(q, k, v) * 2.0, fullgraph=True)
    # the same opaque float32 kernel runs in both, and x 2 is exact: float32's default tolerances (1.3e-6) hold
    torch.testing.assert_close(compiled(q, k, v), OPAQUE(q, k, v) * 2.0)
    assert dict(counters["graph_break"]) == {}
    assert _compiled_graphs() == 1


@pytest.mark.parametrize("name", available_backends())
@pytest.mark.parametrize("with_lse", [False, True], ids=["out", "out+lse"])
def test_every_available_backend_compiles_fullgraph_on_the_cpu(name, with_lse):
    try:
        attn = bind_attention(name, "cpu", torch.float32)
    except BackendUnavailable as err:  # GPU-only kernels (on a GPU machine): tests/gpu covers them
        pytest.skip(str(err))

    def f(q, k, v):
        if with_lse:
            out, lse = attn.with_lse(q, k, v)
            return out, lse
        return attn(q, k, v), None

    q, k, v = _inputs()
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    expected = f(q, k, v)
    # aot_eager runs the same float32 ops, decomposed: ~1e-7 relative; a lost output or lse is O(1)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
    if with_lse:
        torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-6)
    assert dict(counters["graph_break"]) == {}
    assert _compiled_graphs() == 1


def test_a_wan_block_with_an_opaque_kernel_compiles_without_graph_breaks():
    spec = WanSpec(dim=32, num_layers=1, num_heads=2, ffn_dim=64, text_dim=16)
    block = WanBlock(spec, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x = torch.randn(1, 2 * 2 * 3, spec.dim, generator=g)
    e0 = torch.randn(1, 6, spec.dim, generator=g)
    ctx = torch.randn(1, 5, spec.dim, generator=g)
    rope = rope_cos_sin(spec, (2, 2, 3), torch.device("cpu"))
    with torch.no_grad():
        expected = block(x, e0, ctx, rope, OPAQUE, OPAQUE)
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        got = compiled(x, e0, ctx, rope, OPAQUE, OPAQUE)
    # a whole float32 block, decomposed by aot_eager: reassociated reductions, ~1e-6; a graph break is O(1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert dict(counters["graph_break"]) == {}
    assert _compiled_graphs() == 1
