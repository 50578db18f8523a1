"""Quantized linear numerics on the CPU path: quantization steps, the float64 contract, error against bf16."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dax_core.models.wan import WanLinear
from dax_core.quant import (
    QuantizationError,
    QuantLinear,
    get_dynamic_fp8_per_tensor_act_per_tensor_weight_qconfig,
    get_dynamic_fp8_per_token_act_per_channel_weight_qconfig,
    get_dynamic_int8_per_tensor_act_per_tensor_weight_qconfig,
    get_dynamic_int8_per_token_act_per_channel_weight_qconfig,
)
from dax_core.quant.numerics import quantize
from tests.numerics import rel_error

FP8 = torch.float8_e4m3fn
SCHEMES = {
    "fp8-per-token": get_dynamic_fp8_per_token_act_per_channel_weight_qconfig(),
    "fp8-per-tensor": get_dynamic_fp8_per_tensor_act_per_tensor_weight_qconfig(),
    "int8-per-token": get_dynamic_int8_per_token_act_per_channel_weight_qconfig(),
    "int8-per-tensor": get_dynamic_int8_per_tensor_act_per_tensor_weight_qconfig(),
    "fp8-e5m2-act": get_dynamic_fp8_per_token_act_per_channel_weight_qconfig(activation_dtype=torch.float8_e5m2),
}
K, N = 512, 384


def _activations(g: torch.Generator, outlier_channels: bool = False) -> torch.Tensor:
    """[2, 128, K]: Gaussian features, token norms spread log-normally (as in a DiT's residual stream)."""
    x = torch.randn(2, 128, K, generator=g) * torch.exp(0.5 * torch.randn(2, 128, 1, generator=g))
    if outlier_channels:
        x[..., :4] *= 10.0
    return x


def _linear(g: torch.Generator, dtype: torch.dtype) -> nn.Linear:
    lin = nn.Linear(K, N, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=g) / K**0.5 * torch.exp(0.3 * torch.randn(N, 1, generator=g)))
        lin.bias.copy_(0.1 * torch.randn(N, generator=g))
    return lin


def _float64_reference(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """Dequantize the layer's own quantized values (x quantized as the layer does) and matmul in float64."""
    qx, sx = quantize(x.reshape(-1, K), layer.qconfig.activation_dtype, layer.qconfig.per_token)
    xd = qx.double() * sx.double()
    wd = layer.qweight.double() * layer.weight_scale.double()
    out = xd @ wd.t() + layer.bias.double()
    return out.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("dtype", [torch.int8, FP8, torch.float8_e5m2])
@pytest.mark.parametrize("per_row", [True, False])
def test_quantization_error_is_at_most_half_a_step(dtype, per_row):
    g = torch.Generator().manual_seed(1)
    x = _activations(g).reshape(-1, K)
    q, scale = quantize(x, dtype, per_row)
    assert q.dtype == dtype
    assert scale.shape == ((x.shape[0], 1) if per_row else ())
    back = q.float() * scale
    err = (back - x).abs()
    xs = (x / scale).abs()  # magnitude in units of the scale
    if dtype == torch.int8:
        assert q.abs().max() == 127  # the largest magnitude maps to the top code
        assert (err <= 0.5 * scale * (1 + 1e-5)).all()
    else:
        info = torch.finfo(dtype)
        mantissa = 3 if dtype == FP8 else 2
        # normals: half an ulp = 2^-(mantissa+1) relative; subnormals: half the subnormal step
        half_ulp = torch.where(
            xs >= info.smallest_normal,
            xs * 2.0 ** -(mantissa + 1),
            torch.full_like(xs, info.smallest_normal * 2.0 ** -(mantissa + 1)),
        )
        assert (err <= half_ulp * scale * (1 + 1e-5)).all()
        assert q.float().abs().max() == info.max
    per = back.abs().amax(-1) if per_row else back.abs().amax()
    # the largest value maps to the largest code and back: one float32 division and one product, 2 ulp (1.2e-7)
    torch.testing.assert_close(per, x.abs().amax(-1) if per_row else x.abs().amax(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
def test_a_zero_row_quantizes_to_zeros(dtype):
    x = torch.zeros(3, 32)
    x[1] = torch.linspace(-1, 1, 32)
    q, scale = quantize(x, dtype, per_row=True)
    assert torch.isfinite(scale).all() and torch.isfinite(q.float()).all()
    assert (q[0].float() == 0).all() and (q[2].float() == 0).all()


@pytest.mark.parametrize("name", sorted(SCHEMES))
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
def test_each_scheme_equals_float64_dequantize_then_matmul(name, compute):
    g = torch.Generator().manual_seed(2)
    layer = QuantLinear.from_linear(_linear(g, compute), SCHEMES[name])
    x = _activations(g).to(compute)
    got = layer(x).double()
    ref = _float64_reference(layer, x)
    assert got.dtype == torch.float64 and layer(x).dtype == compute
    if compute == torch.float32:
        # float32 accumulation over K=512 products: ~sqrt(K) * 2^-24 relative, far below 1e-5
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    else:
        # one rounding to bf16 at the end: at most half an ulp, 2^-8 relative (+ float32 accumulation noise)
        assert ((got - ref).abs() <= ref.abs() * 2.0**-8 + 1e-5 * ref.abs().max()).all()


# Relative error (Frobenius) of the quantized layer against the same layer in bf16, for Gaussian inputs with
# spread token norms. e4m3 keeps 3 mantissa bits: each operand carries ~2^-4/sqrt(3) ~ 0.026 rms relative
# rounding error, ~0.037 for the product (measured 0.038). INT8 per token: step amax/127, ~3.5 sigma/127/sqrt(12)
# ~ 0.008 per operand, ~0.011 for the product. Per-tensor INT8 spends its 255 codes on the largest token: the
# small tokens lose precision (measured 0.030). e5m2 has 2 mantissa bits (measured 0.059).
BF16_BOUNDS = {
    "fp8-per-token": 0.05,
    "fp8-per-tensor": 0.05,
    "int8-per-token": 0.015,
    "int8-per-tensor": 0.04,
    "fp8-e5m2-act": 0.075,
}


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_error_against_the_bf16_layer_is_within_the_scheme_bound(name):
    g = torch.Generator().manual_seed(3)
    lin = _linear(g, torch.bfloat16)
    x = _activations(g).bfloat16()
    ref = lin(x).double()
    got = QuantLinear.from_linear(lin, SCHEMES[name])(x).double()
    rel = rel_error(got, ref)
    assert rel < BF16_BOUNDS[name], rel
    assert rel > 1e-3, rel  # it did quantize: bf16 against itself would be 0


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_only_per_token_layers_give_a_slice_of_the_tokens_the_rows_they_give_all_of_them(name):
    """What sequence parallelism relies on (``token_local``): a layer run on each rank's slice of the tokens."""
    g = torch.Generator().manual_seed(6)
    layer = QuantLinear.from_linear(_linear(g, torch.float32), SCHEMES[name])
    x = _activations(g)
    whole = layer(x)
    sliced = torch.cat([layer(part) for part in x.tensor_split(3, dim=1)], dim=1)  # 43, 43, 42 tokens
    assert layer.token_local == SCHEMES[name].per_token
    if layer.token_local:
        assert torch.equal(sliced, whole)  # each row from its own row alone: the same bits
    else:
        # each slice takes the amax of its own tokens: another scale, other roundings for every row
        assert (sliced - whole).abs().max() > 1e-3 * whole.abs().max()


def test_per_token_int8_survives_outlier_channels_that_break_per_tensor_int8():
    g = torch.Generator().manual_seed(4)
    lin = _linear(g, torch.bfloat16)
    x = _activations(g, outlier_channels=True).bfloat16()
    ref = lin(x).double()

    def rel(name: str) -> float:
        out = QuantLinear.from_linear(lin, SCHEMES[name])(x).double()
        return rel_error(out, ref)

    # 4 channels 10x larger: per-tensor int8 measured 0.13, per-token 0.028
    assert rel("int8-per-token") < 0.04
    assert rel("int8-per-tensor") > 2 * rel("int8-per-token")


@pytest.mark.parametrize("name", ["fp8-per-token", "fp8-per-tensor"])
def test_fp8_checkpoint_weights_are_taken_as_stored(name):
    """A float8_e4m3fn weight with ComfyUI's per-tensor scale goes into the FP8 layer bit for bit."""
    g = torch.Generator().manual_seed(5)
    lin = WanLinear(K, N, dtype=torch.bfloat16)
    w8 = (torch.randn(N, K, generator=g) * 100).to(FP8)
    lin.weight = nn.Parameter(w8, requires_grad=False)
    lin.weight_scale = torch.tensor(0.00037)
    layer = QuantLinear.from_linear(lin, SCHEMES[name])
    assert layer.qweight.data_ptr() == w8.data_ptr()  # the same storage: no copy, no round trip
    expected_scale = torch.full((N, 1) if layer.per_token else (), 0.00037)
    torch.testing.assert_close(layer.weight_scale, expected_scale, rtol=0, atol=0)
    x = _activations(g).bfloat16()
    ref = lin(x).double()  # WanLinear upcasts the same fp8 weight: only the activation quantization differs
    rel = rel_error(layer(x), ref)
    assert rel < 0.04, rel  # e4m3 activations alone: ~0.026 (see BF16_BOUNDS)


def test_int8_from_an_fp8_checkpoint_requantizes_the_scaled_weight():
    g = torch.Generator().manual_seed(6)
    lin = WanLinear(K, N, dtype=torch.bfloat16)
    lin.weight = nn.Parameter((torch.randn(N, K, generator=g) * 100).to(FP8), requires_grad=False)
    lin.weight_scale = torch.tensor(0.002)
    layer = QuantLinear.from_linear(lin, SCHEMES["int8-per-token"])
    true_w = lin.weight.float() * 0.002
    err = (layer.dequantized_weight() - true_w).abs()
    assert (err <= 0.5 * layer.weight_scale * (1 + 1e-5)).all()  # half an int8 step of each channel


def test_biases_stay_in_high_precision():
    g = torch.Generator().manual_seed(7)
    lin = _linear(g, torch.bfloat16)
    layer = QuantLinear.from_linear(lin, SCHEMES["fp8-per-token"])
    assert layer.bias.dtype == torch.bfloat16
    torch.testing.assert_close(layer.bias, lin.bias, rtol=0, atol=0)
    assert QuantLinear.from_linear(lin, SCHEMES["fp8-per-token"], compute_dtype=torch.float32).bias.dtype == (
        torch.float32
    )


def test_layers_whose_sizes_8bit_gemms_cannot_take_are_refused():
    message = r"blocks\.0\.odd: in_features 100, but 8-bit GEMMs need multiples of 16; keep it in high precision"
    with pytest.raises(QuantizationError, match=message):
        QuantLinear.from_linear(nn.Linear(100, 64), SCHEMES["int8-per-token"], name="blocks.0.odd")


@pytest.mark.parametrize("name", ["fp8-per-token", "int8-per-tensor"])
def test_the_layer_traces_into_one_graph(name):
    """torch.compile(fullgraph=True) must see plain ops only (no graph break); 'eager' keeps the CPU run cheap."""
    g = torch.Generator().manual_seed(8)
    layer = QuantLinear.from_linear(_linear(g, torch.bfloat16), SCHEMES[name])
    x = _activations(g).bfloat16()
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)
