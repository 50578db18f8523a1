"""The dense floor of a forward, measured where it runs: the time of its GEMMs and attention kernels alone.

Each of block 0's ten linear layers is timed on an input of its real shape through the very kernel the model calls
(``F.linear`` for bf16; ``QuantLinear.forward_quantized`` on a ready-quantized input for FP8 / INT8, so the floor
excludes the activation quantization but keeps INT8's rescaling epilogue), and the model's own self- and
cross-attention functions on q, k, v of the real shapes; where the model hands an attention kernel its projections
for a preparation fused into the norms (``BoundAttention.prepared``), that kernel alone on ready-prepared inputs, as
the GEMMs are timed on ready-quantized ones (an attention function that prepares its own inputs is timed with that
preparation: it is what the model calls). The floor is the number of blocks times their sum: what a
forward would take if nothing but these kernels ran, back to back. Norms, modulation, rotary embedding, the
quantization of activations, the embeddings and the head are the distance to it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..models.wan import WanModel
from ..quant.linear import QuantLinear
from .cases import TEXT_TOKENS, Case
from .timing import median, timed

LAYERS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
          "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")  # fmt: skip
TEXT_INPUT = ("cross_attn.k", "cross_attn.v")  # applied to the text tokens, not the video's
WARMUP = 2  # untimed calls of each kernel before the timed ones


def linear_scheme(model: WanModel) -> str:
    """How block 0's query projection multiplies: "bf16", or its quantization scheme."""
    layer = model.blocks[0].self_attn.q
    return layer.qconfig.describe() if hasattr(layer, "qconfig") else str(layer.weight.dtype).removeprefix("torch.")


def attention_kernel(model: WanModel) -> str:
    return str(getattr(model.self_attn_fn, "kernel", type(model.self_attn_fn).__name__))


def _gemm(layer: Any, rows: int, device: torch.device, dtype: torch.dtype, g: torch.Generator):
    x = torch.randn(rows, layer.in_features, device=device, generator=g).to(dtype)
    if isinstance(layer, QuantLinear):
        qx, scale = layer.quantize_input(x)
        return lambda: layer.forward_quantized(qx, scale, dtype)
    if hasattr(layer, "weight") and isinstance(layer.weight, torch.Tensor) and layer.weight.dtype == dtype:
        weight, bias = layer.weight, layer.bias
        return lambda: F.linear(x, weight, bias)
    return lambda: layer(x)  # another layer type (torchao): its own call, quantization included


def _attention(fn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float):
    """What one attention call of the model costs at the floor: the kernel alone on prepared inputs where the model
    prepares them in its norm kernels, else the model's attention function on q, k, v [B, S, H, D]."""
    prepared = getattr(fn, "prepared", None)
    if prepared is None:
        return lambda: fn(q, k, v)
    h = q.shape[2]
    unit = torch.ones(h * q.shape[3], device=q.device, dtype=q.dtype)  # the norm's weight: q, k as they come
    inputs = (prepared.query(q.flatten(2), unit, None, h, eps), prepared.key(k.flatten(2), unit, None, h, eps),
              prepared.value(v.flatten(2), h))  # fmt: skip
    return lambda: prepared.attend(*inputs)


@torch.inference_mode()
def measure_floor(model: WanModel, case: Case, device: torch.device, reps: int = 5, seed: int = 0) -> dict:
    """Per-kernel seconds of one block and TFLOP/s, and the floor of one forward (``floor_s``)."""
    dtype = model.compute_dtype
    spec = case.spec
    block = model.blocks[0]
    g = torch.Generator(device=device).manual_seed(seed)
    s, h, hd = case.tokens, spec.num_heads, spec.head_dim
    kernels: dict[str, dict] = {}
    calls = []

    def record(name: str, fn, flops: float) -> None:
        seconds = median(timed(fn, reps, device, warmup=WARMUP))
        kernels[name] = {"s": seconds, "tflops": flops / seconds / 1e12}
        calls.append(fn)

    def forward_of_kernels() -> None:
        for _ in range(spec.num_layers):
            for fn in calls:
                fn()

    for name in LAYERS:
        layer = block.get_submodule(name)
        rows = TEXT_TOKENS if name in TEXT_INPUT else s
        record(name, _gemm(layer, rows, device, dtype, g), 2 * rows * layer.in_features * layer.out_features)
    q, k, v = (torch.randn(1, s, h, hd, device=device, generator=g).to(dtype) for _ in range(3))
    record("self_attention", _attention(model.self_attn_fn, q, k, v, spec.eps), 4 * s * s * spec.dim)
    kt, vt = (torch.randn(1, TEXT_TOKENS, h, hd, device=device, generator=g).to(dtype) for _ in range(2))
    record("cross_attention", _attention(model.cross_attn_fn, q, kt, vt, spec.eps), 4 * s * TEXT_TOKENS * spec.dim)
    block_s = sum(k["s"] for k in kernels.values())
    gemm_s = sum(kernels[n]["s"] for n in LAYERS)
    return {
        "linear_scheme": linear_scheme(model),
        "attention": attention_kernel(model),
        "kernels": kernels,
        "block_gemm_s": gemm_s,
        "block_attention_s": block_s - gemm_s,
        "floor_s": timed(forward_of_kernels, 1, device)[0],
        "floor_kernels_apart_s": spec.num_layers * block_s,
    }
