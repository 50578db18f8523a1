"""``QuantLinear``: 8-bit weights quantized once, activations quantized at every call, one fused GEMM.

On CUDA the GEMM is ``torch._scaled_mm`` (FP8, scales and bias applied in its epilogue) or ``torch._int_mm``
(INT8, exact int32 accumulation, then one float32 epilogue). Elsewhere the same numbers come from
``numerics.reference_linear`` (dequantize, then matmul), so the CPU tier tests the same contract.
Under ``torch.compile(fullgraph=True)`` the activation quantization is plain PyTorch ops, traced and fused with
whatever produced the activation; in eager CUDA runs it is one Triton kernel, or none where the kernel that produced
the activation quantized it already (``dax_core.models.prequantized``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models import ops, prequantized
from . import kernel_ops
from .kernel_ops import QuantizedRows
from .numerics import dequantize, quantize, reference_linear
from .qconfig import QConfig, QuantizationError

GEMM_ALIGNMENT = 16  # FP8 GEMMs need K and N multiples of 16 (INT8: 8); one rule for both schemes
INT_MM_MIN_ROWS = 17  # cuBLAS's int8 GEMM needs more than 16 rows


def check_shape(name: str, linear: nn.Linear) -> None:
    sizes = (("in_features", linear.in_features), ("out_features", linear.out_features))
    bad = [f"{label} {size}" for label, size in sizes if size % GEMM_ALIGNMENT]
    if bad:
        raise QuantizationError(
            f"{name or 'the model'}: {' and '.join(bad)}, but 8-bit GEMMs need multiples of {GEMM_ALIGNMENT}; "
            f"keep it in high precision (map {name!r} to None in qconfig_dict, or add it to the keep list)"
        )


def takes_weight_as_stored(linear: nn.Linear, qconfig: QConfig) -> bool:
    """Whether the stored weight is already this FP8 scheme's weight: float8_e4m3fn with at most a per-tensor
    ``weight_scale`` (ComfyUI's scaled fp8 files, and the DAX loader's fp8 weights)."""
    scale = getattr(linear, "weight_scale", None)
    return linear.weight.dtype == qconfig.weight_dtype == torch.float8_e4m3fn and (scale is None or scale.numel() == 1)


def quantized_weight(linear: nn.Linear, qconfig: QConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [N, K], scale [N, 1] or 0-d float32) for a linear layer's weight.

    An FP8 checkpoint weight (``takes_weight_as_stored``) is taken as it is, with its per-tensor scale repeated
    per channel when the scheme wants channels: no round trip through bf16. Any other weight is quantized from
    float32, one layer at a time, on its own device.
    """
    w = linear.weight.detach()
    ckpt_scale = getattr(linear, "weight_scale", None)
    if takes_weight_as_stored(linear, qconfig):
        if ckpt_scale is None:
            scale = torch.ones((), dtype=torch.float32, device=w.device)
        else:
            scale = ckpt_scale.detach().to(device=w.device, dtype=torch.float32).reshape(())
        if qconfig.per_token:
            scale = scale.expand(w.shape[0], 1).contiguous()
        return w, scale
    hp = w.float()
    if ckpt_scale is not None:
        hp = hp * ckpt_scale.detach().to(device=w.device, dtype=torch.float32)
    return quantize(hp, qconfig.weight_dtype, per_row=qconfig.per_token)


def high_precision_bias(linear: nn.Linear, dtype: torch.dtype | None) -> torch.Tensor | None:
    """The bias in the compute dtype (biases are never quantized); float8-stored biases are upcast."""
    b = linear.bias
    if b is None:
        return None
    b = b.detach()
    if dtype is not None:
        return b.to(dtype)
    return b.float() if b.element_size() == 1 else b


class QuantLinear(nn.Module):
    """A linear layer with 8-bit weights; ``forward`` quantizes its input dynamically.

    Buffers: ``qweight`` [N, K] (float8 or int8), ``weight_scale`` ([N, 1] per channel or 0-d, float32).
    ``bias`` stays in high precision.
    """

    def __init__(
        self, qweight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None, qconfig: QConfig
    ) -> None:
        super().__init__()
        if qweight.dtype != qconfig.weight_dtype:
            raise QuantizationError(f"qweight is {qweight.dtype}, the qconfig says {qconfig.weight_dtype}")
        self.out_features, self.in_features = qweight.shape
        self.register_buffer("qweight", qweight)
        self.register_buffer("weight_scale", weight_scale.float())
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.qconfig = qconfig
        # plain attributes: what forward branches on, constant under torch.compile
        self.activation_dtype = qconfig.activation_dtype
        self.per_token = qconfig.per_token
        self.is_fp8 = qconfig.family == "fp8"
        self.fast_accum = qconfig.fast_accum
        # each output row depends on its own input row alone (checked by sequence parallelism)
        self.token_local = qconfig.per_token
        self.input_ops = False
        """Quantize inputs with ``kernel_ops`` (DAX's kernels as custom ops, eager and compiled); set by
        ``fused_inputs.use_input_kernels``."""

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, qconfig: QConfig, compute_dtype: torch.dtype | None = None, name: str = ""
    ) -> QuantLinear:
        check_shape(name, linear)
        q, scale = quantized_weight(linear, qconfig)
        return cls(q, scale, high_precision_bias(linear, compute_dtype), qconfig)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"scheme={self.qconfig.describe()}, weight={self.qconfig.weight_dtype}"
        )

    def dequantized_weight(self) -> torch.Tensor:
        """The weight this layer multiplies by, in float32 ([N, K])."""
        return dequantize(self.qweight, self.weight_scale)

    def forward(self, x: torch.Tensor | QuantizedRows) -> torch.Tensor:
        """x [..., in_features], or its rows already quantized to this layer's activation dtype per token."""
        if isinstance(x, QuantizedRows):
            if x.q.dtype != self.activation_dtype or not self.per_token:
                raise ValueError(
                    f"{self.qconfig.describe()} linear given rows quantized to {x.q.dtype}: a block's input_quant "
                    "names a dtype its linears do not take (set it with dax_core.quant.fused_inputs)"
                )
            return self.forward_quantized(x.q, x.scale, x.dtype).reshape(*x.shape[:-1], self.out_features)
        qx, x_scale = self.quantize_input(x)
        return self.forward_quantized(qx, x_scale, x.dtype).reshape(*x.shape[:-1], self.out_features)

    def quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q [rows, in_features], scale) of ``x`` [..., in_features], as ``numerics.quantize`` makes them.

        Eager CUDA, per token: the quantization a fused kernel attached to ``x`` (``prequantized``), else one
        one-pass kernel (``fused_quant``); with ``kernel_ops``, that kernel as a custom op everywhere (the CPU runs
        its PyTorch form); otherwise, and under torch.compile (which fuses it), the PyTorch ops.
        """
        x2 = x.reshape(-1, self.in_features)
        kernels = ops.row_quantizer(x) if self.per_token else None
        if kernels is not None:
            attached = prequantized.take(x, self.activation_dtype)
            if attached is not None:
                return attached
        if self.input_ops and self.per_token:
            return kernel_ops.quantize_rows(x2, self.activation_dtype, False)
        if kernels is not None:
            return kernels.quantize_rows(x2, self.activation_dtype)
        return quantize(x2, self.activation_dtype, self.per_token)

    def forward_quantized(self, qx: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """The layer on an input already quantized by its scheme: [rows, in_features] -> [rows, out_features]."""
        if not qx.is_cuda:
            return reference_linear(qx, x_scale, self.qweight, self.weight_scale, self.bias, out_dtype)
        if self.is_fp8:
            return self._scaled_mm(qx, x_scale, out_dtype)
        return self._int_mm(qx, x_scale, out_dtype)

    def _scaled_mm(self, qx: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        w_scale = self.weight_scale.t() if self.per_token else self.weight_scale  # [1, N] or 0-d
        bias = self.bias
        in_epilogue = bias is not None and out_dtype != torch.float32  # cuBLAS takes no bias with fp32 output
        out = torch._scaled_mm(
            qx,
            self.qweight.t(),  # column-major [K, N], as the FP8 GEMM wants
            scale_a=x_scale,
            scale_b=w_scale,
            bias=bias.to(out_dtype) if in_epilogue else None,
            out_dtype=out_dtype,
            use_fast_accum=self.fast_accum,
        )
        if bias is not None and not in_epilogue:
            out = out + bias.float()
        return out

    def _int_mm(self, qx: torch.Tensor, x_scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        rows = qx.shape[0]
        if rows < INT_MM_MIN_ROWS:
            qx = F.pad(qx, (0, 0, 0, INT_MM_MIN_ROWS - rows))
        acc = torch._int_mm(qx, self.qweight.t())[:rows]
        w_scale = self.weight_scale.t() if self.per_token else self.weight_scale
        out = acc.float() * x_scale * w_scale
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(out_dtype)
