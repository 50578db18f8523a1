"""Eager 8-bit Wan blocks: each linear's input is quantized by the kernel that produces it.

Without torch.compile, PyTorch's per-token quantization (upcast, abs, amax, divide, clamp, cast) reads and writes
the activation several times per linear layer: at 14B 720p that cost more than FP8's faster GEMMs saved. Here:

- the norm kernels feeding q/k/v (one quantization for the three), the cross-attention query and ffn.0 write the
  quantized rows with the normalised ones (``WanBlock.input_quant``, ``dax_core.models.prequantized``);
- GELU and the quantization of its output are one kernel, whose bf16 output is never written (``GeluQuantFfn``);
- what no kernel of ours produces (the attention outputs feeding o) is quantized by one one-pass kernel
  (``QuantLinear.quantize_input``).

``use_input_kernels`` makes the same kernels custom ops that run under torch.compile too (``kernel_ops``).

The values equal the unfused path's bit for bit (the same quantization of the same rounded activations); under
torch.compile every piece takes its PyTorch form and inductor fuses it instead.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models import ops
from ..models.wan import BlockInputQuant, WanModel
from . import kernel_ops
from .linear import QuantLinear


def _per_row_dtype(*layers: nn.Module) -> torch.dtype | None:
    """The activation dtype the layers all quantize their input to per token, or None (one differs or is not ours)."""
    dtypes = {
        layer.activation_dtype if isinstance(layer, QuantLinear) and layer.per_token else None for layer in layers
    }
    return dtypes.pop() if len(dtypes) == 1 else None


class GeluQuantFfn(nn.Sequential):
    """Wan's FFN (``0``: up projection, ``1``: GELU tanh, ``2``: per-token 8-bit down projection) whose GELU, in eager
    CUDA runs, is one kernel with the quantization of its output."""

    input_ops = False
    """GELU and the quantization as one custom op (``kernel_ops.quantize_rows``), eager and compiled."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, act, down = self[0], self[1], self[2]
        h = up(x)
        if self.input_ops:
            q, scale = kernel_ops.quantize_rows(h.reshape(-1, down.in_features), down.activation_dtype, True)
            return down.forward_quantized(q, scale, h.dtype).reshape(*h.shape[:-1], down.out_features)
        kernels = ops.row_quantizer(h)
        if kernels is None:
            return down(act(h))
        q, scale = kernels.quantize_rows(h.reshape(-1, down.in_features), down.activation_dtype, gelu=True)
        return down.forward_quantized(q, scale, h.dtype).reshape(*h.shape[:-1], down.out_features)


def fuse_input_quantization(model: WanModel) -> int:
    """Set each block's ``input_quant`` from its quantized layers and fuse GELU with ffn.2's quantization; returns
    how many blocks take a fused quantized input. Per instance; a block without 8-bit linears is left as it is."""
    fused = 0
    for block in model.blocks:
        attn, cross, ffn = block.self_attn, block.cross_attn, block.ffn
        iq = BlockInputQuant(_per_row_dtype(attn.q, attn.k, attn.v), _per_row_dtype(cross.q), _per_row_dtype(ffn[0]))
        block.input_quant = iq if iq != BlockInputQuant() else None
        gelu = ffn[1]
        if _per_row_dtype(ffn[2]) is not None and isinstance(gelu, nn.GELU) and gelu.approximate == "tanh":
            block.ffn = GeluQuantFfn(*ffn)
        fused += block.input_quant is not None or isinstance(block.ffn, GeluQuantFfn)
    return fused


def use_input_kernels(model: WanModel) -> int:
    """Quantize the 8-bit linears' inputs with ``kernel_ops`` (DAX's kernels as custom ops, also under torch.compile)
    instead of attaching them in eager runs and letting inductor generate them when compiled; run after
    ``fuse_input_quantization``. Returns how many blocks' norms write only the quantized rows. Per instance."""
    fused = 0
    for block in model.blocks:
        if block.input_quant is not None:
            block.input_kernels = kernel_ops.QuantizingNorms()
            fused += 1
        for module in block.modules():
            if isinstance(module, (QuantLinear, GeluQuantFfn)):
                module.input_ops = True
    return fused
