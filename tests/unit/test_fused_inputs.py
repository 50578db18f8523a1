"""Eager 8-bit Wan blocks take each linear's input quantized by the kernel that produced it.

The wiring is checked on the CPU with stand-in kernels written in PyTorch (the Triton kernels run on CUDA only; their
values are checked against ``quantize`` in the interpreter and on the GPU): which norm outputs carry a quantization,
which layers take it, that q, k and v share one, that GELU and ffn.2's quantization are one call, and that the model
computes exactly what the unfused path computes from the same values.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dax_core.models import ops, prequantized
from dax_core.models.spec import WanSpec
from dax_core.models.wan import BlockInputQuant, WanModel
from dax_core.quant import quantize_dynamic
from dax_core.quant.config import QuantizeConfig
from dax_core.quant.fused_inputs import GeluQuantFfn
from dax_core.quant.numerics import quantize
from dax_core.quant.wan import WAN_KEEP_DEFAULT
from tests.unit.tiny_wan import fill_checkpoint_like_

SPEC = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=32, freq_dim=32)
E4M3 = torch.float8_e4m3fn


class StandInKernels:
    """``fused_ops`` and ``fused_quant`` in PyTorch: the same functions, values and attachments; calls are counted."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.fused_quant = SimpleNamespace(quantize_rows=self.quantize_rows)

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _attach(self, out: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        if dtype is not None:
            self._count("norm_quantized")
            prequantized.attach(out, dtype, *quantize(out.reshape(-1, out.shape[-1]), dtype, per_row=True))
        return out

    def modulated_layer_norm(self, x, shift, scale, eps, quantize=None):
        normed = F.layer_norm(x.float(), (x.shape[-1],), eps=eps)
        return self._attach(torch.addcmul(shift, normed, 1 + scale).to(x.dtype), quantize)

    def add_modulated_layer_norm(self, x, r, shift, scale, eps, quantize=None):
        x = x + r
        return x, self.modulated_layer_norm(x, shift, scale, eps, quantize)

    def gated_residual(self, x, y, gate):
        return torch.addcmul(x.float(), y.float(), gate).to(x.dtype)

    def gated_residual_layer_norm(self, x, y, gate, weight, bias, eps, quantize=None):
        x = self.gated_residual(x, y, gate)
        return x, self._attach(F.layer_norm(x, (x.shape[-1],), weight.to(x.dtype), bias.to(x.dtype), eps), quantize)

    def rms_norm_rope(self, x, weight, cos, sin, num_heads, eps):
        return ops.apply_rope(ops.rms_norm(x, weight, eps).unflatten(-1, (num_heads, -1)), cos, sin)

    def quantize_rows(self, x, dtype, gelu=False):
        self._count("gelu_quantize_rows" if gelu else "quantize_rows")
        if gelu:
            x = F.gelu(x, approximate="tanh")
        return quantize(x, dtype, per_row=True)


def _model(dtype: str = "fp8", keep: tuple[str, ...] = WAN_KEEP_DEFAULT) -> WanModel:
    model = fill_checkpoint_like_(WanModel(SPEC, dtype=torch.float32))
    return quantize_dynamic(model, QuantizeConfig(dtype=dtype, keep=keep).qconfig_dict())


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 16, 3, 8, 8, generator=g), torch.tensor([600.0]), torch.randn(1, 7, 32, generator=g)


@pytest.mark.parametrize("dtype", ["fp8", "int8"])
def test_every_linear_input_of_a_block_is_quantized_once_by_its_producer(monkeypatch, dtype):
    model = _model(dtype)
    act = model.blocks[0].self_attn.q.activation_dtype
    assert all(b.input_quant == BlockInputQuant(act, act, act) for b in model.blocks)
    assert all(isinstance(b.ffn, GeluQuantFfn) for b in model.blocks)
    assert "blocks.0.ffn.0.qweight" in model.state_dict()  # the FFN's parameter names are unchanged
    with torch.no_grad():
        unfused = model(*_inputs())  # on the CPU every piece takes its PyTorch form
        kernels = StandInKernels()
        monkeypatch.setattr(ops, "_fused", lambda x: kernels)
        fused = model(*_inputs())
    layers = SPEC.num_layers
    # per block: the three norm outputs (q/k/v share one), o and cross k, v, o one-pass, GELU + ffn.2 in one
    assert kernels.calls == {"norm_quantized": 3 * layers, "quantize_rows": 4 * layers, "gelu_quantize_rows": layers}
    # the head's norm feeds a high-precision layer: it carries no quantization (3 per block above, none more)
    assert torch.equal(fused, unfused)  # the same quantization of the same values


def test_a_block_with_a_high_precision_consumer_quantizes_that_site_in_the_layer():
    model = _model(keep=(*WAN_KEEP_DEFAULT, "blocks.0.self_attn.k", "blocks.1.ffn.2"))
    assert model.blocks[0].input_quant == BlockInputQuant(None, E4M3, E4M3)  # q and v 8-bit, k not: no sharing
    assert isinstance(model.blocks[0].ffn, GeluQuantFfn)
    assert not isinstance(model.blocks[1].ffn, GeluQuantFfn)  # ffn.2 in bf16: GELU stays nn.GELU


def test_per_tensor_scales_are_never_attached():
    per_tensor = quantize_dynamic(
        fill_checkpoint_like_(WanModel(SPEC, dtype=torch.float32)),
        QuantizeConfig(granularity="per-tensor").qconfig_dict(),
    )
    assert all(b.input_quant is None and not isinstance(b.ffn, GeluQuantFfn) for b in per_tensor.blocks)
