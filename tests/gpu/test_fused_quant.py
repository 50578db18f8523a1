"""The per-row quantization kernels on the GPU: bit for bit ``numerics.quantize`` (the same IEEE divisions for the
scale and reciprocal, multiplication, clamp and round-to-nearest-even cast), and an eager FP8 Wan model with its
inputs quantized in the norm kernels against the same model quantizing in each layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("triton", reason="Triton is not installed with this PyTorch: the eager path uses PyTorch ops")

from dax_core.models import fused_ops, fused_quant, prequantized
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanModel
from dax_core.quant import quantize_dynamic
from dax_core.quant.config import QuantizeConfig
from dax_core.quant.fused_inputs import GeluQuantFfn
from dax_core.quant.numerics import quantize
from tests.numerics import rel_error
from tests.unit.fused_quant_interpreted import gelu_bound_breaches, gelu_rows, gelu_values
from tests.unit.tiny_wan import fill_checkpoint_like_

DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2, torch.int8]


def _codes(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8) if q.dtype != torch.int8 else q


def _rows(rows: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    magnitude = torch.exp(2 * torch.randn(rows, 1, generator=g, device="cuda"))
    x = (torch.randn(rows, width, generator=g, device="cuda") * magnitude).bfloat16()
    x[0] = 0  # an all-zero row quantizes to zeros with the floor scale
    return x


@pytest.fixture(autouse=True)
def _fp8_needs_ada(request):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("float8 conversion needs compute capability 8.9+")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", [1536, 5120, 8960, 13824, 200])
def test_quantize_rows_equals_quantize_bit_for_bit(dtype, width):
    x = _rows(3001, width, seed=width)
    q, scale = fused_quant.quantize_rows(x, dtype)
    q_ref, scale_ref = quantize(x, dtype, per_row=True)
    assert torch.equal(scale, scale_ref)
    assert torch.equal(_codes(q), _codes(q_ref))


@pytest.mark.parametrize("width", [8960, 13824])
def test_gelu_quantize_rows_equals_quantize_of_torch_gelu(width):
    h = _rows(2000, width, seed=7) * 0.3
    q, scale = fused_quant.quantize_rows(h, torch.float8_e4m3fn, gelu=True)
    q_ref, scale_ref = quantize(F.gelu(h, approximate="tanh"), torch.float8_e4m3fn, per_row=True)
    # Triton's exp-based tanh and CUDA's tanhf differ in the last float32 bits: a GELU value near a bf16 rounding
    # boundary may round the other way, and its code (or, via the row's amax, the scale) moves by one step, rarely
    codes, codes_ref = _codes(q).int(), _codes(q_ref).int()
    assert (codes - codes_ref).abs().max() <= 1
    assert (codes != codes_ref).float().mean() < 1e-3
    assert ((scale - scale_ref).abs() <= scale_ref * 2**-7).all()  # at most one bf16 step of the amax


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gelu_amax_from_the_row_max_rests_on_every_value(dtype):
    # the GPU's exp and division, not the interpreter's: over every finite 16-bit value, no GELU at or above the bound
    # below a smaller value's, no negative value's |GELU| at the bound
    breaches = gelu_bound_breaches(dtype, "cuda")
    assert breaches["decreases"] == 0 and breaches["negative_over_bound"] == 0, breaches


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("width", [8960, 13824, 200])
def test_gelu_quantize_rows_equals_quantize_of_its_own_gelu(dtype, width):
    # rows whose amax comes from their max, small and all-negative rows (every value's GELU), one whose amax is a
    # negative value's: the codes and scales of quantizing the kernel's own GELU values, bit for bit
    h = gelu_rows(dtype, width, torch.Generator().manual_seed(width), "cuda").repeat(50, 1)
    q, scale = fused_quant.quantize_rows(h, torch.float8_e4m3fn, gelu=True)
    q_ref, scale_ref = quantize(gelu_values(h), torch.float8_e4m3fn, per_row=True)
    assert torch.equal(scale, scale_ref)
    assert torch.equal(_codes(q), _codes(q_ref))


@pytest.mark.parametrize("site", ["modulated", "add_modulated", "gated_affine"])
@pytest.mark.parametrize("dim", [1536, 5120])
def test_norm_kernels_attach_the_quantization_of_what_they_wrote(site, dim):
    g = torch.Generator(device="cuda").manual_seed(dim)
    x, r = (torch.randn(2, 1777, dim, generator=g, device="cuda").bfloat16() for _ in range(2))
    shift, scale, gate = (0.3 * torch.randn(2, 1, dim, generator=g, device="cuda") for _ in range(3))
    w = (1 + 0.1 * torch.randn(dim, generator=g, device="cuda")).bfloat16()
    b = (0.1 * torch.randn(dim, generator=g, device="cuda")).bfloat16()
    e4m3 = torch.float8_e4m3fn
    if site == "modulated":
        normed = fused_ops.modulated_layer_norm(x, shift, scale, 1e-6, e4m3)
        stream, ref = x, F.layer_norm(x.double(), (dim,), eps=1e-6) * (1 + scale.double()) + shift.double()
    elif site == "add_modulated":
        stream, normed = fused_ops.add_modulated_layer_norm(x, r, shift, scale, 1e-6, e4m3)
        assert torch.equal(stream, x + r)  # one float32 add, one rounding: PyTorch's bf16 add
        ref = F.layer_norm(stream.double(), (dim,), eps=1e-6) * (1 + scale.double()) + shift.double()
    else:
        stream, normed = fused_ops.gated_residual_layer_norm(x, r, gate, w, b, 1e-6, e4m3)
        assert rel_error(stream, x.double() + r.double() * gate.double()) < 4e-3  # one bf16 rounding
        ref = F.layer_norm(stream.double(), (dim,), w.double(), b.double(), eps=1e-6)
    assert rel_error(normed, ref) < 4e-3  # one bf16 rounding of the output (~2^-9 relative)
    attached = prequantized.take(normed, e4m3)
    assert attached is not None
    q_ref, s_ref = quantize(normed.reshape(-1, dim), e4m3, per_row=True)
    assert torch.equal(attached[1], s_ref)
    assert torch.equal(_codes(attached[0]), _codes(q_ref))


def _unfuse(model: WanModel) -> None:
    for block in model.blocks:
        block.input_quant = None
        if isinstance(block.ffn, GeluQuantFfn):
            block.ffn = nn.Sequential(*block.ffn)


@torch.inference_mode()
def test_an_fp8_model_with_fused_input_quantization_computes_what_the_layers_would():
    spec = WanSpec(dim=1536, num_layers=2, num_heads=12, ffn_dim=8960, text_dim=256)
    bf16 = fill_checkpoint_like_(WanModel(spec, dtype=torch.bfloat16)).cuda()
    g = torch.Generator(device="cuda").manual_seed(3)
    x = torch.randn(1, 16, 5, 30, 52, generator=g, device="cuda")
    t, ctx = torch.tensor([500.0], device="cuda"), torch.randn(1, 512, 256, generator=g, device="cuda").bfloat16()
    reference = bf16(x, t, ctx).float()
    outputs = {}
    for fused in (True, False):
        model = fill_checkpoint_like_(WanModel(spec, dtype=torch.bfloat16)).cuda()
        quantize_dynamic(model, QuantizeConfig().qconfig_dict())
        if not fused:
            _unfuse(model)
        outputs[fused] = model(x, t, ctx).float()
    quantization_shift = rel_error(outputs[False], reference)
    fusion_shift = rel_error(outputs[True], outputs[False])
    # the fused norms and GELU round like the unfused ones up to float32 summation order and the GELU kernel's own
    # tanh: an input sitting on an 8-bit rounding boundary then takes the neighbouring code (one step), and two layers
    # carry that on. Measured on an H200: 9.5e-4 against a quantization shift of 2.9e-3 (0.32 of it); a wrong scale
    # or row moves the output by about the quantization shift or more. The fused path must not be further from the
    # unquantized model than the unfused one (measured: as far, within the same rounding noise).
    assert 0 < quantization_shift < 0.1
    assert fusion_shift < 0.5 * quantization_shift, (fusion_shift, quantization_shift)
    assert rel_error(outputs[True], reference) < 1.25 * quantization_shift
