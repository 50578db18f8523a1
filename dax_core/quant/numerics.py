"""The quantization arithmetic, written once in plain PyTorch ops.

Every backend shares this contract: ``t ~ q * scale`` with a symmetric scale ``amax / qmax`` (per row or
per tensor, in float32), and a quantized linear equals "dequantize, then matmul in float32, add the bias,
round once to the activation dtype". Being plain ops, ``quantize`` traces under torch.compile, where
inductor fuses a per-token quantization (row amax, divide, clamp, cast) into one kernel.
"""

from __future__ import annotations

import torch

SCALE_FLOOR = 1e-12  # amax floor: an all-zero row quantizes to zeros instead of 0/0 = NaN
INT8_MAX = 127.0  # symmetric int8: [-127, 127], so -q is always representable


def qmax(dtype: torch.dtype) -> float:
    """Largest magnitude of the quantized format: 448 for float8_e4m3fn, 57344 for e5m2, 127 for int8."""
    return INT8_MAX if dtype == torch.int8 else float(torch.finfo(dtype).max)


def quantize(t: torch.Tensor, dtype: torch.dtype, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of ``t`` [..., K] -> (q, scale) with ``t ~ q * scale``.

    ``per_row``: one scale per row over the last dim (scale [..., 1]); else one for the tensor (0-d).
    The scale is float32; float8 rounds to nearest even in the cast, int8 rounds half to even.
    """
    top = qmax(dtype)
    tf = t.float()
    amax = tf.abs().amax(dim=-1, keepdim=True) if per_row else tf.abs().amax()
    # tensor by tensor: an IEEE division on every device (PyTorch's CUDA division by a Python scalar multiplies by its
    # rounded reciprocal, and a scalar divided by a tensor is a reciprocal times the scalar)
    floored, top_t = amax.clamp(min=SCALE_FLOOR), torch.full_like(amax, top)
    scale = floored / top_t
    # times the reciprocal qmax / amax, not divided by the scale: as accurate (two roundings from t * qmax / amax
    # either way) and, in the per-row kernels, one multiplication per value instead of an IEEE division
    scaled = (tf * (top_t / floored)).clamp(-top, top)
    if dtype == torch.int8:
        scaled = scaled.round()
    return scaled.to(dtype), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * scale`` in float32."""
    return q.float() * scale.float()


def reference_linear(
    qx: torch.Tensor,
    x_scale: torch.Tensor,
    qw: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The numerics contract on any device: dequantize x [M, K] and w [N, K], matmul in float32, add the bias,
    round once. ``x_scale`` is [M, 1] or 0-d, ``w_scale`` [N, 1] or 0-d."""
    out = dequantize(qx, x_scale) @ dequantize(qw, w_scale).t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)
