"""The inputs SageAttention2's sm90 kernel takes, written once in PyTorch: the layouts, the quantization arithmetic,
and their inverse.

``sageattn_qk_int8_pv_fp8_cuda_sm90`` (per-thread Q/K granularity, fp8 P·V with "fp32+fp32" accumulation) prepares
its inputs before its kernel runs; these functions make exactly what that preparation makes, from the same bf16 q, k
and v [B, S, H, D]:

- Q, int8 per thread: the sm90 kernel's warps each take 16 query rows; query rows ``t`` and ``t + 8`` of a warp's 16
  share one scale per head (the rows one thread of the int8 MMA holds), so a 64-row block has 4 x 8 scales.
- K, smoothed and int8 per thread: the mean over all tokens is subtracted first (``k - k.mean(1)`` in bf16; softmax
  does not change when every key moves by the same vector), then keys ``128 n + 8 j + 2 g + {0, 1}`` (j = 0..15) share
  one scale per head: 4 scales per 128-key block.
- Int8 arithmetic (Sage's): ``scale = amax / 127 + 1e-7``, ``x / scale`` rounded half away from zero.
- V, fp8 e4m3 per channel: ``amax`` of each (head, channel) over all tokens, values ``v * (448 / amax)``, saturated and
  rounded to nearest even, stored [B, D, H, S'] with the tokens padded with zeros to a multiple of 128 and permuted
  within each 16 so the fp8 MMA reads them in order: position ``4a + 2b + c`` holds token ``2a + 8b + c``. The scale
  is ``amax / 448``. (An all-zero channel gets scale 0 and zeros, where Sage's own division would make NaNs.)

These are the CPU implementations of ``sage_prepared``'s ops and the references its Triton kernels are tested against.
"""

from __future__ import annotations

import torch

Q_BLOCK = 64  # query rows per block of the sm90 kernel (CTA_Q)
Q_WARP = 16  # query rows per warp; rows t and t + 8 of a warp share a scale
K_BLOCK = 128  # keys per block (CTA_K); V is padded to a multiple of it
INT8_MAX = 127.0
INT8_EPS = 1e-7  # Sage adds it to every int8 scale
FP8_MAX = 448.0  # float8_e4m3fn
HEAD_DIMS = (64, 128)  # the head sizes the sm90 kernel is built for
V_ORDER = (0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15)
"""Token at each position of a group of 16 in the fp8 V layout."""


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def query_scale_count(tokens: int) -> int:
    """Scales per (batch, head) of Q: 8 per warp of 16 rows, whole 64-row blocks."""
    return cdiv(tokens, Q_BLOCK) * (Q_BLOCK // Q_WARP) * 8


def key_scale_count(tokens: int) -> int:
    """Scales per (batch, head) of K: 4 per 128-key block."""
    return cdiv(tokens, K_BLOCK) * 4


def padded_tokens(tokens: int) -> int:
    return cdiv(tokens, K_BLOCK) * K_BLOCK


def _pad_tokens(t: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = cdiv(t.shape[1], multiple) * multiple - t.shape[1]
    return torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad)) if pad else t


def quantize_int8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Sage's int8 codes: x / scale rounded half away from zero (add +-0.5, truncate toward zero)."""
    v = x / scale
    return (v + torch.where(v >= 0, 0.5, -0.5)).to(torch.int8)


def int8_scale(amax: torch.Tensor) -> torch.Tensor:
    """Sage's int8 scale: amax / 127 + 1e-7 (tensor by tensor: an IEEE division on every device)."""
    return amax / torch.full_like(amax, INT8_MAX) + INT8_EPS


def quantize_query(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, S, H, D] -> (int8 [B, S, H, D], scales float32 [B, H, query_scale_count(S)])."""
    b, s, h, d = q.shape
    x = _pad_tokens(q.float(), Q_BLOCK).view(b, -1, 2, 8, h, d)  # token 16 w + 8 a + t
    scale = int8_scale(x.abs().amax(dim=(2, 5), keepdim=True))  # [B, W, 1, 8, H, 1]
    codes = quantize_int8(x, scale).view(b, -1, h, d)[:, :s]
    return codes, scale.view(b, -1, h).transpose(1, 2).contiguous()


def smooth_key(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k - mean, mean [B, 1, H, D]) in k's dtype, as Sage smooths K: the mean over all tokens, subtracted."""
    mean = k.mean(dim=1, keepdim=True)
    return k - mean, mean


def quantize_key(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A smoothed k [B, S, H, D] -> (int8 [B, S, H, D], scales float32 [B, H, key_scale_count(S)])."""
    b, s, h, d = k.shape
    x = _pad_tokens(k.float(), K_BLOCK).view(b, -1, 16, 4, 2, h, d)  # key 128 n + 8 j + 2 g + i
    scale = int8_scale(x.abs().amax(dim=(2, 4, 6), keepdim=True))  # [B, N, 1, 4, 1, H, 1]
    codes = quantize_int8(x, scale).view(b, -1, h, d)[:, :s]
    return codes, scale.view(b, -1, h).transpose(1, 2).contiguous()


def value_scale(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale amax / 448, its reciprocal factor 448 / amax; 0 for an all-zero channel), float32 [B, 1, H, D]."""
    amax = v.float().abs().amax(dim=1, keepdim=True)
    top = torch.full_like(amax, FP8_MAX)
    recp = torch.where(amax > 0, top / amax, torch.zeros_like(amax))
    return amax / top, recp


def quantize_value(v: torch.Tensor, storage: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """v [B, S, H, D] -> (fp8 [B, D, H, padded_tokens(S)], scales float32 [B, H, D]).

    ``storage``: keep the saturated float32 values instead of casting them (to compare with a kernel that does)."""
    b, _, h, d = v.shape
    scale, recp = value_scale(v)
    values = _pad_tokens((v.float() * recp).clamp(-FP8_MAX, FP8_MAX), K_BLOCK)
    order = torch.tensor(V_ORDER, device=v.device)
    values = values.view(b, -1, 16, h, d)[:, :, order]  # position p of each 16 holds token V_ORDER[p]
    values = values.reshape(b, -1, h, d).permute(0, 3, 2, 1)
    return values.to(storage or torch.float8_e4m3fn).contiguous(), scale.view(b, h, d)


def dequantize_query(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 q [B, S, H, D] the kernel computes with."""
    b, s, h, _ = codes.shape
    per_row = scale.transpose(1, 2).reshape(b, -1, 8, h)  # [B, W, 8, H]
    per_row = per_row[:, :, None].expand(b, per_row.shape[1], 2, 8, h).reshape(b, -1, h)[:, :s]
    return codes.float() * per_row[..., None]


def dequantize_key(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 smoothed k [B, S, H, D] the kernel computes with."""
    b, s, h, _ = codes.shape
    per = scale.transpose(1, 2).reshape(b, -1, 1, 4, 1, h)  # [B, N, 1, 4, 1, H]
    per = per.expand(b, per.shape[1], 16, 4, 2, h).reshape(b, -1, h)[:, :s]
    return codes.float() * per[..., None]


def dequantize_value(values: torch.Tensor, scale: torch.Tensor, tokens: int) -> torch.Tensor:
    """The float32 v [B, S, H, D] the kernel computes with (the layout undone, the padding dropped)."""
    b, d, h, padded = values.shape
    x = values.float().permute(0, 3, 2, 1).reshape(b, -1, 16, h, d)
    inverse = torch.argsort(torch.tensor(V_ORDER, device=values.device))
    x = x[:, :, inverse].reshape(b, padded, h, d)[:, :tokens]
    return x * scale[:, None]


def attend(
    q: tuple[torch.Tensor, torch.Tensor],
    k: tuple[torch.Tensor, torch.Tensor],
    v: tuple[torch.Tensor, torch.Tensor],
    sm_scale: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Softmax attention in float32 on the dequantized inputs: [B, S, H, D] in ``out_dtype``."""
    qf = dequantize_query(*q).transpose(1, 2)
    kf = dequantize_key(*k).transpose(1, 2)
    vf = dequantize_value(*v, tokens=k[0].shape[1]).transpose(1, 2)
    weights = torch.softmax((qf @ kf.transpose(-1, -2)) * sm_scale, dim=-1)
    return (weights @ vf).transpose(1, 2).to(out_dtype).contiguous()
