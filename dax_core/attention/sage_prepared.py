"""SageAttention2's sm90 kernel on inputs that DAX's own kernels prepare (``AttentionConfig.sage_inputs="fused"``).

The model hands the q, k and v projections to ``FusedSageInputs`` (``BoundAttention.prepared``) instead of the
normalised q, k, v: its ops apply the layer's RMSNorm and rotary embedding and write the int8 / fp8 tensors the sm90
kernel reads (``sage_inputs``), and ``attend`` calls that kernel directly, skipping SageAttention's own preparation.
Each step is one ``torch.library`` custom op with a fake implementation, so torch.compile keeps the block one graph.
On the CPU the ops run their PyTorch definitions (``sage_layout``), which the tests compare the kernels with.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models import ops
from . import sage_layout as L
from .registry import Rope

KERNEL = "qk_int8_sv_f8_accum_f32_fuse_v_scale_attn_inst_buf"
"""The sm90 kernel ``sageattn_qk_int8_pv_fp8_cuda_sm90`` runs for per-thread Q/K and "fp32+fp32" P·V accumulation."""
PER_THREAD = 3  # SageAttention's QuantGranularity of per-thread scales
NHD = 0  # its tensor layout [batch, tokens, heads, head_dim]


@functools.cache
def sm90_kernel() -> Callable[..., torch.Tensor] | str:
    """The installed SageAttention2's sm90 kernel entry point, or why there is none."""
    for module in ("sageattention.sm90_compile", "sageattention._qattn_sm90"):
        try:
            fn = getattr(importlib.import_module(module), KERNEL, None)
        except ImportError:
            continue
        if fn is not None:
            return fn
    return f"the installed SageAttention2 has no sm90 kernel {KERNEL} (sageattention.sm90_compile)"


def _heads(x: torch.Tensor, num_heads: int) -> tuple[int, int, int, int]:
    b, s, dim = x.shape
    return b, s, num_heads, dim // num_heads


def _normed(x: torch.Tensor, weight: torch.Tensor, cos, sin, num_heads: int, eps: float) -> torch.Tensor:
    if cos is None:
        return ops.rms_norm(x, weight, eps).unflatten(-1, (num_heads, -1))
    return ops.rms_norm_rope(x, weight, cos, sin, num_heads, eps)


def _rope(cos: torch.Tensor | None, sin: torch.Tensor | None) -> Rope | None:
    return None if cos is None or sin is None else (cos, sin)


# -- the ops: CUDA kernels, CPU definitions, fake shapes -------------------------------------------------------------


@torch.library.custom_op("dax::sage_query", mutates_args=(), device_types="cuda")
def sage_query(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    num_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    from . import sage_inputs

    return sage_inputs.query(x, weight, _rope(cos, sin), num_heads, eps)


@sage_query.register_kernel("cpu")
def _(x, weight, cos, sin, num_heads, eps):
    return L.quantize_query(_normed(x, weight, cos, sin, num_heads, eps))


@sage_query.register_fake
def _(x, weight, cos, sin, num_heads, eps):
    b, s, h, d = _heads(x, num_heads)
    return x.new_empty((b, s, h, d), dtype=torch.int8), x.new_empty((b, h, L.query_scale_count(s)), dtype=torch.float32)


@torch.library.custom_op("dax::sage_key", mutates_args=(), device_types="cuda")
def sage_key(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    num_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    from . import sage_inputs

    return sage_inputs.key(x, weight, _rope(cos, sin), num_heads, eps)


@sage_key.register_kernel("cpu")
def _(x, weight, cos, sin, num_heads, eps):
    return L.quantize_key(L.smooth_key(_normed(x, weight, cos, sin, num_heads, eps))[0])


@sage_key.register_fake
def _(x, weight, cos, sin, num_heads, eps):
    b, s, h, d = _heads(x, num_heads)
    return x.new_empty((b, s, h, d), dtype=torch.int8), x.new_empty((b, h, L.key_scale_count(s)), dtype=torch.float32)


@torch.library.custom_op("dax::sage_value", mutates_args=(), device_types="cuda")
def sage_value(v: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    from . import sage_inputs

    return sage_inputs.value(v, num_heads)


@sage_value.register_kernel("cpu")
def _(v, num_heads):
    return L.quantize_value(v.unflatten(-1, (num_heads, -1)))


@sage_value.register_fake
def _(v, num_heads):
    b, s, h, d = _heads(v, num_heads)
    out = v.new_empty((b, d, h, L.padded_tokens(s)), dtype=torch.float8_e4m3fn)
    return out, v.new_empty((b, h, d), dtype=torch.float32)


@torch.library.custom_op("dax::sage_attend", mutates_args=(), device_types="cuda")
def sage_attend(
    q: torch.Tensor,
    q_scale: torch.Tensor,
    k: torch.Tensor,
    k_scale: torch.Tensor,
    v: torch.Tensor,
    v_scale: torch.Tensor,
    sm_scale: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    kernel = sm90_kernel()
    if isinstance(kernel, str):
        raise RuntimeError(kernel)
    out = torch.empty(q.shape, device=q.device, dtype=out_dtype)
    with torch.cuda.device(q.device):
        kernel(q, k, v, out, q_scale, k_scale, v_scale, NHD, 0, PER_THREAD, sm_scale, 0)
    return out


@sage_attend.register_kernel("cpu")
def _(q, q_scale, k, k_scale, v, v_scale, sm_scale, out_dtype):
    return L.attend((q, q_scale), (k, k_scale), (v, v_scale), sm_scale, out_dtype)


@sage_attend.register_fake
def _(q, q_scale, k, k_scale, v, v_scale, sm_scale, out_dtype):
    return q.new_empty(q.shape, dtype=out_dtype)


# -- what the model calls ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FusedSageInputs:
    """``BoundAttention.prepared`` of SageAttention2's sm90 kernel: the layer's projections in, its output out.

    ``query`` / ``key`` take a projection [B, S, H * D] with the layer's RMSNorm weight and, in self-attention, the
    rotary embedding; ``value`` the value projection; ``attend`` returns [B, S, H, D] in ``dtype``."""

    dtype: torch.dtype

    def query(self, x: torch.Tensor, weight: torch.Tensor, rope: Rope | None, num_heads: int, eps: float):
        cos, sin = (None, None) if rope is None else rope
        return sage_query(x, weight, cos, sin, num_heads, eps)

    def key(self, x: torch.Tensor, weight: torch.Tensor, rope: Rope | None, num_heads: int, eps: float):
        cos, sin = (None, None) if rope is None else rope
        return sage_key(x, weight, cos, sin, num_heads, eps)

    def value(self, v: torch.Tensor, num_heads: int):
        return sage_value(v, num_heads)

    def attend(self, q, k, v, scale: float | None = None) -> torch.Tensor:
        sm_scale = q[0].shape[-1] ** -0.5 if scale is None else scale
        return sage_attend(q[0], q[1], k[0], k[1], v[0], v[1], sm_scale, self.dtype)


def fused_inputs(
    kernel: str, qk_quant_gran: str, pv_accum_dtype: str, dtype: torch.dtype, required: bool = True
) -> FusedSageInputs | None:
    """The fused preparation for a bound SageAttention2 kernel. What it cannot feed raises when ``required``
    (``sage_inputs="fused"``), else gives None: SageAttention prepares its inputs itself (``"auto"``)."""
    entry = sm90_kernel()
    feedable = kernel == "sm90" and qk_quant_gran == "per_thread" and pv_accum_dtype == "fp32+fp32"
    if not required:
        return FusedSageInputs(dtype) if feedable and not isinstance(entry, str) else None
    if not feedable:
        raise ValueError(
            "sage_inputs 'fused' feeds SageAttention2's sm90 kernel with per-thread Q/K and fp32+fp32 P·V accumulation "
            f"(here: {kernel}, {qk_quant_gran}, {pv_accum_dtype}); choose sage_inputs 'sage', or those options on a "
            "Hopper GPU"
        )
    if isinstance(entry, str):
        raise ValueError(f"sage_inputs 'fused': {entry}; choose sage_inputs 'sage' or update SageAttention2")
    return FusedSageInputs(dtype)
