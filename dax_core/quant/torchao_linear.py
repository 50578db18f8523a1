"""The torchao backend: the same quantized weights wrapped in torchao's ``Float8Tensor`` / ``Int8Tensor``.

torchao is optional. Its tensors carry the activation-quantization recipe, and ``F.linear`` on them runs
torchao's kernels (``_scaled_mm`` rowwise or tensorwise for FP8, ``_int_mm`` plus rescaling for INT8).
The weights are built from DAX's own quantization (``linear.quantized_weight``), so FP8 checkpoints go in
as they are on this backend too. torchao's global inductor settings are left alone (no ``quantize_``).

Numerics differ from ``QuantLinear`` in two small ways: torchao's INT8 activation scale is amax / 127.5
over [-128, 127], and its INT8 rescale rounds to the activation dtype before the weight scale and bias.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from .linear import check_shape, high_precision_bias, quantized_weight
from .numerics import SCALE_FLOOR
from .qconfig import QConfig, QuantizationError

INSTALL_HINT = "pip install torchao (0.10 or newer, built for your torch)"


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def require_torchao() -> None:
    if not torchao_available():
        raise QuantizationError(f"the torchao backend needs torchao, which is not installed: {INSTALL_HINT}")


def torchao_weight(
    qweight: torch.Tensor, scale: torch.Tensor, qconfig: QConfig, compute_dtype: torch.dtype
) -> torch.Tensor:
    """A torchao quantized tensor holding ``qweight`` [N, K] and its scale, with dynamic activation quantization."""
    from torchao.quantization import Float8MMConfig, Float8Tensor, Int8Tensor, PerRow, PerTensor
    from torchao.quantization.quantize_.common import KernelPreference
    from torchao.quantization.quantize_.workflows import QuantizeTensorToFloat8Kwargs, QuantizeTensorToInt8Kwargs

    n, k = qweight.shape
    granularity = PerRow() if qconfig.per_token else PerTensor()
    block_size = [1, k] if qconfig.per_token else [n, k]
    scale = scale.float().reshape(n, 1) if qconfig.per_token else scale.float().reshape(1, 1)
    if qconfig.family == "fp8":
        mm_config = Float8MMConfig(use_fast_accum=qconfig.fast_accum)
        act = QuantizeTensorToFloat8Kwargs(
            float8_dtype=qconfig.activation_dtype,
            granularity=granularity,
            mm_config=mm_config,
            hp_value_lb=SCALE_FLOOR,  # as ours: a zero row must not divide by a zero scale
            kernel_preference=KernelPreference.TORCH,
        )
        return Float8Tensor(
            qweight,
            scale,
            block_size=block_size,
            mm_config=mm_config,
            act_quant_kwargs=act,
            kernel_preference=KernelPreference.TORCH,
            dtype=compute_dtype,
        )
    act = QuantizeTensorToInt8Kwargs(granularity=granularity)
    return Int8Tensor(qweight, scale, block_size, compute_dtype, act_quant_kwargs=act)


class TorchaoQuantLinear(nn.Module):
    """A linear layer whose weight is a torchao quantized tensor; ``F.linear`` dispatches to torchao."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, qconfig: QConfig) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.qconfig = qconfig
        self.token_local = qconfig.per_token  # as QuantLinear's

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, qconfig: QConfig, compute_dtype: torch.dtype | None = None, name: str = ""
    ) -> TorchaoQuantLinear:
        require_torchao()
        check_shape(name, linear)
        dtype = compute_dtype or _compute_dtype_of(linear)
        q, scale = quantized_weight(linear, qconfig)
        return cls(torchao_weight(q, scale, qconfig, dtype), high_precision_bias(linear, dtype), qconfig)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"scheme={self.qconfig.describe()} (torchao)"
        )

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.dequantize(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _compute_dtype_of(linear: nn.Linear) -> torch.dtype:
    dtype = linear.weight.dtype
    if dtype.is_floating_point and dtype.itemsize >= 2:
        return dtype
    raise QuantizationError(
        f"the weight is stored as {dtype}: pass compute_dtype (the activation dtype) to quantize_dynamic"
    )
