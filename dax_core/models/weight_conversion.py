"""The dtype each stored tensor takes in the model, and float8 (de)quantization with a per-tensor scale.

Rules (``weight_dtype`` as in recipes):
- ``modulation`` parameters and the patch embedding stay float32, as Wan keeps them;
- other parameters that are not linear weights (norm weights, biases) take the compute dtype;
- linear weights: "default" keeps float8 weights as they are stored (WanLinear upcasts them per call,
  applying ComfyUI's ``scale_weight``) and converts anything else to the compute dtype; "bf16", "fp16"
  and "fp32" convert to that dtype, multiplying in a stored scale; "fp8_e4m3fn" stores the linear
  weights of the blocks as float8_e4m3fn with a per-tensor scale amax / 448 (so nothing is clipped)
  and converts the other linear weights (embeddings, head) to the compute dtype.

A ``delta`` (a LoRA's change to the parameter, float32) is added to the stored value dequantized to float32, and the
sum takes the dtype the stored value would have taken. A float8 linear weight that stays float8 is quantized again,
with a per-tensor scale amax / 448 of its own (the stored scale may clip the merged values); an e5m2 weight becomes
e4m3fn on the way, as ``fp8_e4m3fn`` storage makes every weight.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from .dtypes import TORCH_DTYPES

FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_E4M3_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
# Conversions work on float32 copies of one chunk of a tensor at a time. On the CPU, small chunks keep glibc's
# heap from fragmenting around the converted tensors the loader keeps (measured quantizing a 217 MB bf16 model
# to a 121 MB fp8 one: peak 155-260 MB with 64 Ki-element chunks, 260-530 MB with whole-tensor temporaries);
# GPU caching allocators reuse big blocks, and big chunks mean few kernel launches.
_CPU_CHUNK_ELEMENTS = 1 << 16
_DEVICE_CHUNK_ELEMENTS = 1 << 24
_BLOCK_LINEAR = re.compile(r"blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.(?:[qkvo]|k_img|v_img)|ffn\.[02])\.weight")


def is_block_linear_weight(name: str) -> bool:
    """True for the weights of the blocks' q/k/v/o and feed-forward linears (the ones fp8 storage targets)."""
    return _BLOCK_LINEAR.fullmatch(name) is not None


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float8_e4m3fn weight and its float32 per-tensor scale amax / 448, such that ``q.float() * scale ~= weight``."""
    low, high = weight.aminmax()
    amax = torch.maximum(-low, high).float()
    scale = torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.ones_like(amax))
    return _map_chunks(weight, torch.float8_e4m3fn, lambda w: w.div_(scale).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX)), scale


def dequantize(tensor: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``tensor * scale`` (computed in float32) as ``dtype``; a plain dtype conversion when there is no scale."""
    if scale is None:
        return tensor.to(dtype)
    scale = scale.to(device=tensor.device, dtype=torch.float32)
    return _map_chunks(tensor, dtype, lambda w: w.mul_(scale))


def _map_chunks(tensor: torch.Tensor, dtype: torch.dtype, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` applied to float32 copies of consecutive chunks of ``tensor``, stored as ``dtype``."""
    out = torch.empty(tensor.shape, dtype=dtype, device=tensor.device)
    src, dst = tensor.reshape(-1), out.view(-1)
    chunk = _CPU_CHUNK_ELEMENTS if tensor.device.type == "cpu" else _DEVICE_CHUNK_ELEMENTS
    for start in range(0, src.numel(), chunk):
        dst[start : start + chunk] = fn(src[start : start + chunk].to(torch.float32, copy=True))
    return out


def convert_parameter(
    name: str,
    tensor: torch.Tensor,
    scale: torch.Tensor | None,
    *,
    linear_weight: bool,
    weight_dtype: str,
    compute_dtype: torch.dtype,
    delta: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The value parameter ``name`` takes in the model and, for a float8 linear weight, its scale (else None).

    ``delta``: float32, of the parameter's shape and on ``tensor``'s device, added in float32 before the conversion.
    """
    stored_fp8 = tensor.dtype in FLOAT8_DTYPES
    if delta is not None:
        merged = dequantize(tensor, scale, torch.float32)
        tensor, scale = (merged + delta if merged is tensor else merged.add_(delta)), None  # never the caller's
    if name.endswith("modulation") or name.startswith("patch_embedding."):
        return dequantize(tensor, scale, torch.float32), None
    if not linear_weight:
        return dequantize(tensor, scale, compute_dtype), None
    if weight_dtype == "fp8_e4m3fn" and is_block_linear_weight(name):
        if tensor.dtype == torch.float8_e4m3fn:
            return tensor, scale
        return quantize_fp8(dequantize(tensor, scale, torch.float32))
    if weight_dtype == "default" and stored_fp8:
        if tensor.dtype in FLOAT8_DTYPES:
            return tensor, scale
        return quantize_fp8(tensor)  # merged: float8 again, with a scale of its own
    target = compute_dtype if weight_dtype in ("default", "fp8_e4m3fn") else TORCH_DTYPES[weight_dtype]
    return dequantize(tensor, scale, target), None
