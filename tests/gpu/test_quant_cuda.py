"""The CUDA paths of dax_core.quant (``_scaled_mm``, ``_int_mm``, torchao) against the CPU reference numerics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dax_core.accelerations import BuildEnv
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanLinear, WanModel
from dax_core.quant import (
    QuantLinear,
    TorchaoQuantLinear,
    get_dynamic_fp8_per_tensor_act_per_tensor_weight_qconfig,
    get_dynamic_fp8_per_token_act_per_channel_weight_qconfig,
    get_dynamic_int8_per_tensor_act_per_tensor_weight_qconfig,
    get_dynamic_int8_per_token_act_per_channel_weight_qconfig,
    linear_weight_bytes,
    quantize_dynamic,
    torchao_available,
)
from dax_core.quant.config import QuantizeConfig
from dax_core.quant.numerics import SCALE_FLOOR, quantize
from dax_core.quant.wan import WAN_KEEP_DEFAULT
from tests.numerics import rel_error
from tests.unit.tiny_wan import fill_checkpoint_like_

SCHEMES = {
    "fp8-per-token": get_dynamic_fp8_per_token_act_per_channel_weight_qconfig(),
    "fp8-per-token-precise": get_dynamic_fp8_per_token_act_per_channel_weight_qconfig(fast_accum=False),
    "fp8-per-tensor": get_dynamic_fp8_per_tensor_act_per_tensor_weight_qconfig(),
    "int8-per-token": get_dynamic_int8_per_token_act_per_channel_weight_qconfig(),
    "int8-per-tensor": get_dynamic_int8_per_tensor_act_per_tensor_weight_qconfig(),
}
M, K, N = 300, 2048, 1536  # M on no 16-row boundary, K long enough to exercise accumulation


@pytest.fixture(autouse=True)
def _needs_fp8_for_fp8(request):
    name = request.node.callspec.params.get("name", "") if hasattr(request.node, "callspec") else ""
    if name.startswith("fp8") and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 GEMMs need compute capability 8.9+")


def _linear(seed: int = 0) -> nn.Linear:
    g = torch.Generator(device="cuda").manual_seed(seed)
    lin = nn.Linear(K, N, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(N, K, generator=g, device="cuda") / K**0.5)
        lin.bias.copy_(0.1 * torch.randn(N, generator=g, device="cuda"))
    return lin


def _x(rows: int = M, seed: int = 1) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    scale = torch.exp(0.5 * torch.randn(rows, 1, generator=g, device="cuda"))
    return (torch.randn(rows, K, generator=g, device="cuda") * scale).bfloat16()


def _float64(qx, sx, qw, sw, bias) -> torch.Tensor:
    """Dequantize-then-matmul in float64 on the CPU."""
    xd = qx.cpu().double() * sx.cpu().double()
    wd = qw.cpu().double() * sw.cpu().double()
    return xd @ wd.t() + bias.cpu().double()


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_cuda_activation_quantization_matches_the_cpu_one(name):
    cfg = SCHEMES[name]
    x = _x()
    q_gpu, s_gpu = quantize(x, cfg.activation_dtype, cfg.per_token)
    q_cpu, s_cpu = quantize(x.cpu(), cfg.activation_dtype, cfg.per_token)
    torch.testing.assert_close(s_gpu.cpu(), s_cpu, rtol=1e-6, atol=0)  # amax is exact; one float32 division
    # CUDA's and the CPU's float32 division and float8 conversion may round a value on a tie differently: such a
    # value lands on the neighbouring code (bit patterns of same-sign codes are ordered), and it is rare
    a = q_gpu.cpu().view(torch.uint8).int() if cfg.family == "fp8" else q_gpu.cpu().int()
    b = q_cpu.view(torch.uint8).int() if cfg.family == "fp8" else q_cpu.int()
    differ = (a != b).float().mean().item()
    assert (a - b).abs().max() <= 1 and differ < 1e-3, differ


# Relative (Frobenius) error bounds against float64 dequantize-then-matmul of the same quantized values.
# bf16 output: one final rounding, ~1.1e-3 rms (2^-9/sqrt(3)); measured 1.7e-3 with FP8 accumulation included.
# FP8 fast accumulation skips the tensor cores' periodic FP32 promotion: measured 1.5e-3 at K=5120;
# with promotion 1.3e-4. INT8 accumulates exactly in int32: only the float32 epilogue rounds.
BOUNDS = {
    ("fp8-per-token", torch.bfloat16): 5e-3,
    ("fp8-per-token", torch.float32): 4e-3,
    ("fp8-per-token-precise", torch.bfloat16): 3e-3,
    ("fp8-per-token-precise", torch.float32): 5e-4,
    ("fp8-per-tensor", torch.bfloat16): 5e-3,
    ("fp8-per-tensor", torch.float32): 4e-3,
    ("int8-per-token", torch.bfloat16): 3e-3,
    ("int8-per-token", torch.float32): 1e-6,
    ("int8-per-tensor", torch.bfloat16): 3e-3,
    ("int8-per-tensor", torch.float32): 1e-6,
}


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_gemm_path_matches_float64_dequantize_then_matmul(name, out_dtype):
    cfg = SCHEMES[name]
    layer = QuantLinear.from_linear(_linear(), cfg)
    x = _x().to(out_dtype)
    got = layer(x)
    assert got.dtype == out_dtype and got.is_cuda
    qx, sx = quantize(x, cfg.activation_dtype, cfg.per_token)
    ref = _float64(qx, sx, layer.qweight, layer.weight_scale, layer.bias)
    assert rel_error(got, ref) < BOUNDS[(name, out_dtype)], rel_error(got, ref)
    if cfg.family == "int8" and out_dtype == torch.bfloat16:  # exact accumulation: every element within rounding
        gd = got.cpu().double()
        assert ((gd - ref).abs() <= ref.abs() * 2.0**-8 + 1e-6 * ref.abs().max()).all()


@pytest.mark.parametrize("rows", [1, 5, 16, 17])
def test_int8_takes_fewer_rows_than_cublas_int8_gemm_needs(rows):
    cfg = SCHEMES["int8-per-token"]
    layer = QuantLinear.from_linear(_linear(), cfg)
    x = _x(rows)
    qx, sx = quantize(x, cfg.activation_dtype, cfg.per_token)
    ref = _float64(qx, sx, layer.qweight, layer.weight_scale, layer.bias)
    assert rel_error(layer(x), ref) < 3e-3  # exact int32 sums, then one bf16 rounding of the output (2^-9)


@pytest.mark.parametrize("name", ["fp8-per-token", "int8-per-token"])
def test_compiled_layer_fuses_the_activation_quantization_into_one_kernel(name):
    from torch._inductor.utils import run_and_get_code

    layer = QuantLinear.from_linear(_linear(), SCHEMES[name])
    x = _x().view(3, 100, K)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    out, codes = run_and_get_code(compiled, x)
    kernels = sum(code.count("@triton.jit") for code in codes)
    # fp8: row amax + divide + clamp + cast in one kernel, scales and bias in _scaled_mm's epilogue.
    # int8: the same one quantization kernel, plus one epilogue kernel after _int_mm (int32 -> scaled bf16).
    assert kernels == (1 if name.startswith("fp8") else 2), codes
    assert any("_scaled_mm" in c or "_int_mm" in c for c in codes)
    # inductor may round the division differently in a few elements: a code flip is 1/8 (fp8) of one value
    assert rel_error(out, layer(x).cpu().double()) < 2e-3


def test_fp8_checkpoint_weight_goes_in_as_stored():
    lin = WanLinear(K, N, device="cuda", dtype=torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(2)
    w8 = (torch.randn(N, K, generator=g, device="cuda") * 64).to(torch.float8_e4m3fn)
    lin.weight = nn.Parameter(w8, requires_grad=False)
    lin.weight_scale = torch.tensor(0.0004, device="cuda")
    for name in ("fp8-per-token", "fp8-per-tensor"):
        layer = QuantLinear.from_linear(lin, SCHEMES[name])
        assert layer.qweight.data_ptr() == w8.data_ptr()
        x = _x()
        qx, sx = quantize(x, torch.float8_e4m3fn, layer.per_token)
        ref = _float64(qx, sx, w8, torch.tensor(0.0004), lin.bias)
        # the same codes: fp32 accumulation (fast accumulation may keep fewer bits) and one bf16 rounding
        assert rel_error(layer(x), ref) < 5e-3


@pytest.mark.skipif(not torchao_available(), reason="torchao is not installed")
@pytest.mark.parametrize("name", ["fp8-per-token", "fp8-per-tensor", "int8-per-token", "int8-per-tensor"])
def test_torchao_path_matches_the_reference_numerics(name):
    from torchao.quantization import Float8Tensor, Int8Tensor, PerRow, PerTensor

    cfg = SCHEMES[name]
    lin = _linear()
    layer = TorchaoQuantLinear.from_linear(lin, cfg, compute_dtype=torch.bfloat16)
    ours = QuantLinear.from_linear(lin, cfg)
    torch.testing.assert_close(layer.dequantized_weight(), ours.dequantized_weight(), rtol=0, atol=0)
    x = _x()
    got = layer(x)
    granularity = PerRow() if cfg.per_token else PerTensor()
    if cfg.family == "fp8":  # torchao's FP8 activation scale is amax / 448 computed in the activation dtype
        act = Float8Tensor.from_hp(x, cfg.activation_dtype, granularity, hp_value_lb=SCALE_FLOOR)
        bound = BOUNDS[(name, torch.bfloat16)]
    else:  # torchao's INT8 activations: amax / 127.5 over [-128, 127], and a bf16 rounding before the weight scale
        act = Int8Tensor.from_hp(x, granularity)
        bound = 6e-3  # two bf16 roundings
    qx, sx = act.qdata, act.scale.reshape(-1, 1) if cfg.per_token else act.scale.reshape(())
    ref = _float64(qx, sx, ours.qweight, ours.weight_scale, lin.bias)
    assert rel_error(got, ref) < bound, rel_error(got, ref)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    # inductor computes torchao's bf16 scale arithmetic in float32, so codes may differ from eager torchao's:
    # two valid quantizations of the same x differ by up to their rounding noise (~0.037 each for fp8)
    assert rel_error(compiled(x), got.cpu().double()) < 0.06


def test_auto_backend_is_the_faster_own_path_and_torchao_is_chosen_by_name():
    model = nn.ModuleDict({"a": _linear(), "b": _linear(1)})
    quantize_dynamic(model, {"a": SCHEMES["fp8-per-token"], "b": SCHEMES["int8-per-token"]})
    assert isinstance(model["a"], QuantLinear) and isinstance(model["b"], QuantLinear)
    if torchao_available():
        model = nn.ModuleDict({"a": _linear()})
        quantize_dynamic(model, {"a": SCHEMES["fp8-per-token"]}, backend="torchao")
        assert isinstance(model["a"], TorchaoQuantLinear)


SPEC = WanSpec(dim=256, num_layers=2, num_heads=4, ffn_dim=512, text_dim=64, freq_dim=32)


def _wan() -> WanModel:
    return fill_checkpoint_like_(WanModel(SPEC, dtype=torch.bfloat16))


@pytest.mark.parametrize("name", ["fp8-per-token", "int8-per-token"])
def test_quantized_wan_on_cuda_tracks_the_cpu_reference_and_compiles(name):
    cfg = SCHEMES[name]
    keep = dict.fromkeys(WAN_KEEP_DEFAULT)
    cpu = quantize_dynamic(_wan(), {"": cfg, **keep}, backend="torch")
    gpu = quantize_dynamic(_wan().cuda(), {"": cfg, **keep}, backend="torch")
    g = torch.Generator().manual_seed(1)
    x, t, ctx = torch.randn(1, 16, 3, 16, 16, generator=g), torch.tensor([700.0]), torch.randn(1, 24, 64, generator=g)
    with torch.no_grad():
        ref = cpu(x, t, ctx).double()
        got = gpu(x.cuda(), t.cuda(), ctx.cuda())
        # bf16 element-wise kernels differ between the CPU and the GPU (fused Triton); both quantize the same way
        assert rel_error(got, ref) < 1e-2
        p = gpu.prepare(x.cuda(), t.cuda(), ctx.cuda())
        block = gpu.blocks[0]
        args = (p.tokens, p.e0, p.context, p.rope, gpu.self_attn_fn, gpu.cross_attn_fn)
        torch._dynamo.reset()
        compiled = torch.compile(block, fullgraph=True)
        eager_out = block(*args).double()
        # bf16 element-wise work fused differently by inductor: a few bf16 roundings (2^-9 each) per block
        assert rel_error(compiled(*args), eager_out) < 1e-2


@pytest.mark.parametrize("backend", ["torch", "torchao"])
def test_quantize_config_applies_on_cuda_and_halves_block_memory(backend):
    if backend == "torchao" and not torchao_available():
        pytest.skip("torchao is not installed")
    model = _wan().cuda()
    bf16_bytes = linear_weight_bytes(model.blocks)
    QuantizeConfig(dtype="int8", backend=backend).apply(model, BuildEnv(torch.device("cuda")))
    expected = TorchaoQuantLinear if backend == "torchao" else QuantLinear
    assert isinstance(model.blocks[1].cross_attn.v, expected)
    # int8 weights (half of bf16) plus bf16 biases and float32 per-channel scales
    assert linear_weight_bytes(model.blocks) < 0.53 * bf16_bytes
