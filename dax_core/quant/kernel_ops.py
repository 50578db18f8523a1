"""The 8-bit linears' input quantization as custom ops: DAX's own kernels, eager and under torch.compile
(``QuantizeConfig.input_kernels="dax"``).

By default an eager CUDA run fuses the quantization into DAX's Triton kernels (``fused_inputs``), and torch.compile
traces the PyTorch form, whose fused kernels inductor generates: at 14B 720p those ran 3-5x slower than one read and
one write of their tensors (GELU with ffn.2's quantization 3.8 ms a call where 3.1 GB of traffic is 0.65 ms). With
``input_kernels="dax"`` the same work is ``torch.library`` custom ops that inductor calls as they are:

- the norm sites feeding only 8-bit per-token linears (``BlockInputQuant``) write the residual stream and the
  quantized rows of their output, not the output itself: ``QuantizingNorms`` returns ``QuantizedRows``, which
  ``QuantLinear`` takes as its input;
- GELU and ffn.2's quantization are one op (``gelu_quantize_rows``); any other 8-bit input one op (``quantize_rows``).

On the GPU the kernels launch with the warps measured fastest at Wan's widths (``fused_quant.row_warps``,
``fused_ops.norm_warps``). On the CPU the ops run the PyTorch definitions (``models.ops``, ``numerics.quantize``),
the contract the kernels meet bit for bit (their interpreter tests and the GPU tier).
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..models import ops
from .numerics import quantize


class QuantizedRows(NamedTuple):
    """An activation [..., K] given only as its per-row quantization: q [rows, K] and float32 scale [rows, 1];
    ``shape`` and ``dtype`` are the activation's (the linear's output dtype)."""

    q: torch.Tensor
    scale: torch.Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype


# -- the ops -----------------------------------------------------------------------------------------------------------


@functools.cache
def _triton_kernels() -> tuple[ModuleType, ModuleType] | None:
    """(``fused_ops``, ``fused_quant``), or None without Triton (the ops then run their PyTorch definitions)."""
    try:
        from ..models import fused_ops, fused_quant
    except ImportError:
        return None
    return fused_ops, fused_quant


def _normed(x, r, gate, a, b, eps: float, affine: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual stream, norm output) in their PyTorch form, as ``models.ops`` computes them."""
    if r is None:
        stream = x
    elif gate is None:
        stream = x + r
    else:
        stream = ops.gated_residual(x, r, gate)
    if affine:
        return stream, ops.affine_layer_norm(stream, a, b, eps)
    return stream, ops.modulated_layer_norm(stream, a, b, eps)


def _reference_norm(x, r, gate, a, b, eps, affine, dtype):
    stream, normed = _normed(x, r, gate, a, b, eps, affine)
    q, scale = quantize(normed.reshape(-1, x.shape[-1]), dtype, per_row=True)
    return (stream if r is not None else x.new_empty(0)), q, scale


@torch.library.custom_op("dax::norm_quantize", mutates_args=(), device_types="cuda")
def norm_quantize(
    x: torch.Tensor,
    r: torch.Tensor | None,
    gate: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    affine: bool,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x + r or x + r * gate, empty without ``r``; q; scale) of the LayerNorm of that stream (``affine``: weight
    ``a``, bias ``b``; else modulation shift ``a``, scale ``b``) quantized per row to ``dtype``."""
    kernels = _triton_kernels()
    if kernels is None:
        return _reference_norm(x, r, gate, a, b, eps, affine, dtype)
    fused_ops, _ = kernels
    if affine:
        a, b = a.to(x.dtype), b.to(x.dtype)
    else:
        a, b = a.float(), b.float()
    stream, q, scale = fused_ops.norm_quantized(x, r, gate, a, b, eps, affine, dtype)
    return (x.new_empty(0) if stream is None else stream), q, scale


norm_quantize.register_kernel("cpu")(_reference_norm)


@norm_quantize.register_fake
def _(x, r, gate, a, b, eps, affine, dtype):
    rows, width = x.numel() // x.shape[-1], x.shape[-1]
    stream = x.new_empty(x.shape) if r is not None else x.new_empty(0)
    return stream, x.new_empty((rows, width), dtype=dtype), x.new_empty((rows, 1), dtype=torch.float32)


@torch.library.custom_op("dax::quantize_rows", mutates_args=(), device_types="cuda")
def quantize_rows(x: torch.Tensor, dtype: torch.dtype, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row quantization of x [rows, K] (``gelu``: of ``GELU_tanh(x)`` rounded to x's dtype) in one kernel."""
    kernels = _triton_kernels()
    if kernels is None:
        return _reference_rows(x, dtype, gelu)
    return kernels[1].quantize_rows(x, dtype, gelu=gelu)


def _reference_rows(x, dtype, gelu):
    return quantize(F.gelu(x, approximate="tanh") if gelu else x, dtype, per_row=True)


quantize_rows.register_kernel("cpu")(_reference_rows)


@quantize_rows.register_fake
def _(x, dtype, gelu):
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((x.shape[0], 1), dtype=torch.float32)


# -- what the block and the linears call ----------------------------------------------------------------------------


class QuantizingNorms:
    """``models.ops``' three norm sites for a block whose norm outputs feed 8-bit per-token linears alone
    (``WanBlock.input_kernels``): given ``quantize``, they return ``QuantizedRows`` in place of the output;
    without it, ``ops``' result."""

    def modulated_layer_norm(self, x, shift, scale, eps: float, quantize: torch.dtype | None = None):
        if quantize is None:
            return ops.modulated_layer_norm(x, shift, scale, eps)
        return _rows(x, norm_quantize(x, None, None, shift, scale, eps, False, quantize))[1]

    def add_modulated_layer_norm(self, x, r, shift, scale, eps: float, quantize: torch.dtype | None = None):
        if quantize is None:
            return ops.add_modulated_layer_norm(x, r, shift, scale, eps)
        return _rows(x, norm_quantize(x, r, None, shift, scale, eps, False, quantize))

    def gated_residual_layer_norm(self, x, y, gate, weight, bias, eps: float, quantize: torch.dtype | None = None):
        if quantize is None:
            return ops.gated_residual_layer_norm(x, y, gate, weight, bias, eps)
        return _rows(x, norm_quantize(x, y, gate, weight, bias, eps, True, quantize))


def _rows(x: torch.Tensor, result: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
    stream, q, scale = result
    return stream, QuantizedRows(q, scale, tuple(x.shape), x.dtype)
