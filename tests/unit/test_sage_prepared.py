"""SageAttention2 fed by DAX's own preparation kernels (``sage_inputs="fused"``): when binding gives it, what it
refuses, the custom ops' schemas and fake shapes, and a Wan model on that path (its CPU definitions) against SDPA,
eager and compiled with fullgraph."""

from __future__ import annotations

import dataclasses
import sys
import types

import pytest
import torch

from dax_core.attention import BoundAttention, bind_attention, sage, sage_prepared
from dax_core.attention.config import AttentionConfig
from dax_core.attention.sage_prepared import KERNEL, FusedSageInputs
from dax_core.models.rope import rope_cos_sin
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanModel
from tests.numerics import rel_error
from tests.unit import test_attention_selection as selection
from tests.unit.test_attention_selection import CUDA, _sage2, fresh

gpu, install = selection.gpu, selection.install  # the stand-in GPU and package fixtures
OPCHECK_NO_SCHEMA = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
SPEC = WanSpec(dim=128, num_layers=2, num_heads=2, ffn_dim=256, text_dim=32)  # head_dim 64: a size the kernel takes


@pytest.fixture
def sage2_sm90(install):
    """A stand-in SageAttention2 whose sm90 module has the fused-scale kernel."""
    package, core = _sage2()
    module = types.ModuleType("sageattention.sm90_compile")
    setattr(module, KERNEL, lambda *args: None)
    sage_prepared.sm90_kernel.cache_clear()
    install(package, core)
    sys.modules["sageattention.sm90_compile"] = module
    yield module
    del sys.modules["sageattention.sm90_compile"]
    sage_prepared.sm90_kernel.cache_clear()


def test_fused_inputs_bind_to_the_sm90_kernel_and_say_so(gpu, sage2_sm90):
    bound = fresh(sage.SAGE).bind(CUDA, torch.bfloat16, inputs="fused")
    assert bound.prepared == FusedSageInputs(torch.bfloat16)
    assert "sageattn_qk_int8_pv_fp8_cuda_sm90" in bound.kernel
    assert "inputs prepared by DAX's norm kernels" in bound.kernel
    assert fresh(sage.SAGE).bind(CUDA, torch.bfloat16).prepared is None  # SageAttention prepares them by default
    assert sage_prepared.sm90_kernel() is getattr(sage2_sm90, KERNEL)


@pytest.mark.parametrize(
    ("capability", "options", "message"),
    [
        ((8, 9), {}, r"sm90 kernel with per-thread Q/K .* \(here: sm89, per_thread, fp32\+fp16\)"),
        ((9, 0), {"qk_quant_gran": "per_warp"}, r"\(here: sm90, per_warp, fp32\+fp32\); choose sage_inputs 'sage'"),
    ],
)
def test_fused_inputs_refuse_the_kernels_they_cannot_feed(gpu, sage2_sm90, capability, options, message):
    gpu.capability = capability
    with pytest.raises(ValueError, match=message):
        fresh(sage.SAGE).bind(CUDA, torch.bfloat16, inputs="fused", **options)


def test_fused_inputs_refuse_a_build_without_the_kernel_entry(gpu, install):
    install(*_sage2())
    sage_prepared.sm90_kernel.cache_clear()
    try:
        with pytest.raises(ValueError, match=rf"no sm90 kernel {KERNEL} .*choose sage_inputs 'sage'"):
            fresh(sage.SAGE).bind(CUDA, torch.bfloat16, inputs="fused")
        assert fresh(sage.SAGE).bind(CUDA, torch.bfloat16, inputs="auto").prepared is None  # Sage prepares them
    finally:
        sage_prepared.sm90_kernel.cache_clear()


@pytest.mark.parametrize(
    ("capability", "options", "fused"),
    [((9, 0), {}, True), ((8, 9), {}, False), ((9, 0), {"qk_quant_gran": "per_warp"}, False)],
)
def test_auto_fuses_where_it_can_and_lets_sage_prepare_elsewhere(gpu, sage2_sm90, capability, options, fused):
    gpu.capability = capability
    bound = fresh(sage.SAGE).bind(CUDA, torch.bfloat16, inputs="auto", **options)
    assert (bound.prepared is not None) == fused
    assert ("inputs prepared by DAX's norm kernels" in bound.kernel) == fused


def test_the_attention_config_passes_the_choice_to_the_binding(gpu, sage2_sm90, monkeypatch):
    monkeypatch.setitem(sage.SAGE.__dict__, "unavailable_reason", None)
    self_attn, cross_attn = AttentionConfig("sage", sage_inputs="fused").bind(CUDA, torch.bfloat16)
    assert self_attn.prepared is not None and cross_attn is self_attn
    assert AttentionConfig("sage", sage_inputs="fused").bind(CUDA, torch.float16)[0].prepared == FusedSageInputs(
        torch.float16
    )
    # the default ("auto") fuses on the sm90 kernel; "sage" lets SageAttention prepare its own inputs
    assert AttentionConfig("sage").bind(CUDA, torch.bfloat16)[0].prepared == FusedSageInputs(torch.bfloat16)
    assert AttentionConfig("sage", sage_inputs="sage").bind(CUDA, torch.bfloat16)[0].prepared is None


def _samples(b=1, s=150, h=2, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, s, h * d, generator=g).bfloat16()
    w = (1 + 0.1 * torch.randn(h * d, generator=g)).bfloat16()
    cos, sin = rope_cos_sin(WanSpec(dim=h * d, num_layers=1, num_heads=h, ffn_dim=8), (2, 5, 15), "cpu")
    return x, w, cos, sin


def test_the_ops_schemas_and_fake_shapes_match_their_cpu_definitions():
    x, w, cos, sin = _samples()
    torch.library.opcheck(sage_prepared.sage_query, (x, w, cos, sin, 2, 1e-6))
    torch.library.opcheck(sage_prepared.sage_query, (x, w, None, None, 2, 1e-6))
    torch.library.opcheck(sage_prepared.sage_key, (x, w, cos, sin, 2, 1e-6))
    torch.library.opcheck(sage_prepared.sage_value, (x, 2))
    q = sage_prepared.sage_query(x, w, cos, sin, 2, 1e-6)
    k = sage_prepared.sage_key(x, w, cos, sin, 2, 1e-6)
    v = sage_prepared.sage_value(x, 2)
    args = (*q, *k, *v, 0.125, torch.bfloat16)
    # test_schema compares the inputs before and after with arithmetic PyTorch's CPU lacks for float8: done by hand
    torch.library.opcheck(sage_prepared.sage_attend, args, test_utils=OPCHECK_NO_SCHEMA)
    before = [t.view(torch.uint8).clone() if t.dtype == torch.float8_e4m3fn else t.clone() for t in (*q, *k, *v)]
    sage_prepared.sage_attend(*args)
    after = [t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t for t in (*q, *k, *v)]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def _model() -> WanModel:
    """bf16 with float32 modulation, as loaded; weights of std 0.1 (norm weights near 1), so attention matters."""
    model = WanModel(SPEC, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (p.ndim == 1 and "norm" in name and "weight" in name))
    model.to(torch.bfloat16)
    for m in (*model.blocks, model.head):
        m.modulation.data = m.modulation.data.float()
    model.patch_embedding.float()
    return model


@pytest.mark.usefixtures("fresh_dynamo")
def test_a_wan_model_on_the_fused_path_matches_sdpa_eager_and_compiled():
    from torch._dynamo.utils import counters

    model = _model()
    sdpa = bind_attention("sdpa", "cpu", torch.bfloat16)
    g = torch.Generator().manual_seed(3)
    x, t, ctx = torch.randn(1, 16, 3, 8, 10, generator=g), torch.tensor([500.0]), torch.randn(1, 12, 32, generator=g)
    fused: BoundAttention = dataclasses.replace(sdpa, prepared=FusedSageInputs(torch.bfloat16))
    with torch.no_grad():
        ref = model(x, t, ctx)
        model.set_attention(dataclasses.replace(sdpa, run=lambda q, k, v, scale: torch.zeros_like(q)))
        without = model(x, t, ctx)
        model.set_attention(fused)
        got = model(x, t, ctx)
        for block in model.blocks:
            block.compile(backend="aot_eager", fullgraph=True)
        compiled = model(x, t, ctx)
    # int8 Q/K and e4m3 V in every attention of 2 blocks, on a bf16 model: measured 6.4e-3 (the layouts' own test
    # bounds one attention), where attention makes 58 % of the output (a wrong layout or a missing norm is O(1))
    assert rel_error(without, ref) > 0.3
    assert rel_error(got, ref) < 3e-2
    assert torch.equal(compiled, got)  # the same ops, traced: the graph holds the custom ops as they are
    assert counters["graph_break"] == {}
