"""Triton kernels that write SageAttention2's sm90 inputs (``sage_layout``) in the passes that make q, k and v.

SageAttention2's own preparation reads and writes q, k and v several times after the model has made them: Q's int8
quantization, K's mean, ``k - mean``, K's int8 quantization, V's zero padding (a copy), V's transposed and permuted
copy and its fp8 quantization. Here:

- ``query``: Wan's RMSNorm across heads (and the rotary embedding in self-attention), rounded to the activation
  dtype as ``models.ops`` rounds it, and Q's per-thread int8 quantization: one read of the projection from memory
  (a second from L2, a few heads at a time: a whole row of heads padded to a power of two idled lanes and held too
  many registers for the GPU to keep enough rows in flight), one int8 write.
- ``key``: the same norm, writing k; its mean (PyTorch's ``k.mean(1)``, as SageAttention takes it); then ``k - mean``
  and K's per-thread int8 quantization in one pass (no bf16 ``k - mean`` tensor).
- ``value``: the per-channel amax (atomic max: exact in any order), then the transposed, padded, permuted fp8 write.

The int8 arithmetic is Sage's own Triton formula (``amax / 127 + 1e-7``, ``x / scale``, rounded half away from zero)
with the same operations, so on the GPU the codes equal Sage's preparation of the same bf16 values bit for bit; V's
scale and factor are IEEE divisions. ``storage`` (tests): keep V's saturated float32 values instead of casting them
(Triton's interpreter converts float32 to float8 wrongly at binade edges).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import sage_layout as L

INT8_EPS = tl.constexpr(L.INT8_EPS)
FP8_MAX = tl.constexpr(L.FP8_MAX)
AMAX_ROWS, AMAX_COLS = 256, 256  # V amax tile


@triton.jit
def _rounded(x, dt: tl.constexpr):
    """float32 x rounded to dtype ``dt`` (to nearest even) and back. For bf16 in integer operations: the GPU's
    conversion rounds the same way, Triton's interpreter truncates instead."""
    if dt == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return bits.to(tl.float32, bitcast=True)
    return x.to(dt).to(tl.float32)


@triton.jit
def _row_rstd(x_ptr, rows, valid, heads, eps, CHUNK: tl.constexpr, HALF: tl.constexpr):
    """1 / RMS over all heads of rows ``rows`` [R] of x [B * S, heads * 2 * HALF], in float32: [R, 1, 1]. The
    heads are read CHUNK at a time (a power of two dividing them: no lane idles on padding)."""
    dim = heads * 2 * HALF
    cols = tl.arange(0, CHUNK)[None, :, None] * (2 * HALF) + tl.arange(0, 2 * HALF)[None, None, :]
    base = x_ptr + rows[:, None, None] * dim + cols
    acc = tl.zeros((rows.shape[0], CHUNK, 2 * HALF), dtype=tl.float32)
    for h0 in range(0, heads, CHUNK):
        x = tl.load(base + h0 * (2 * HALF), mask=valid[:, None, None], other=0.0).to(tl.float32)
        acc += x * x
    return tl.rsqrt(tl.sum(tl.sum(acc, axis=2), axis=1) / dim + eps)[:, None, None]


@triton.jit
def _wan_norm(x_ptr, w_ptr, c, s, rows, valid, rstd, h0, heads,
              CHUNK: tl.constexpr, HALF: tl.constexpr, ROPE: tl.constexpr):  # fmt: skip
    """Heads h0 ... h0 + CHUNK of rows ``rows`` [R] as [R, CHUNK, 2 * HALF]: x times ``rstd`` rounded to x's dtype,
    times the weight rounded again (Wan's RMSNorm), then (``ROPE``) each row's rotary embedding ``c``, ``s``
    [R, 1, HALF] of the interleaved (even, odd) pairs, rounded once more. Returns the values (float32 holding values
    of x's dtype) and their offsets."""
    dt = x_ptr.dtype.element_ty
    cols = (h0 + tl.arange(0, CHUNK)[None, :, None]) * (2 * HALF) + tl.arange(0, 2 * HALF)[None, None, :]
    offsets = rows[:, None, None] * (heads * 2 * HALF) + cols
    x = tl.load(x_ptr + offsets, mask=valid[:, None, None], other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols).to(tl.float32)
    y = _rounded(_rounded(x * rstd, dt) * w, dt)
    if ROPE:
        y0, y1 = tl.split(tl.reshape(y, (y.shape[0], CHUNK, HALF, 2)))
        y = tl.interleave(_rounded(y0 * c - y1 * s, dt), _rounded(y0 * s + y1 * c, dt))
    return y, offsets


@triton.jit
def _rope_rows(cos_ptr, sin_ptr, token, valid, tokens, HALF: tl.constexpr, ROPE: tl.constexpr):
    """The rotary tables' rows of ``token`` [R] as [R, 1, HALF] (zeros when ``ROPE`` is off: not read)."""
    angle = (token % tokens)[:, None, None] * HALF + tl.arange(0, HALF)[None, None, :]
    if ROPE:
        c = tl.load(cos_ptr + angle, mask=valid[:, None, None], other=0.0)
        s = tl.load(sin_ptr + angle, mask=valid[:, None, None], other=0.0)
    else:
        c = tl.zeros(angle.shape, dtype=tl.float32)
        s = c
    return c, s


@triton.jit
def _int8_codes(x, scale):
    """Sage's int8 codes of x for a broadcastable scale: x / scale rounded half away from zero."""
    v = x / scale
    return (v + tl.where(v >= 0, 0.5, -0.5)).to(tl.int8)


@triton.jit
def _query_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, q_ptr, scale_ptr, tokens, heads, n_scales, eps,
                  CHUNK: tl.constexpr, HALF: tl.constexpr, ROPE: tl.constexpr):  # fmt: skip
    # One program: rows t and t + 8 of warp block w (of 16 query rows), all heads, CHUNK at a time; one scale per
    # head. The rows are read twice: for their norm, then (from L2) to write them.
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    token = (pid // 8) * 16 + pid % 8 + 8 * tl.arange(0, 2)
    valid = token < tokens
    rows = b * tokens + token
    rstd = _row_rstd(x_ptr, rows, valid, heads, eps, CHUNK, HALF)
    c, s = _rope_rows(cos_ptr, sin_ptr, token, valid, tokens, HALF, ROPE)
    for h0 in range(0, heads, CHUNK):
        y, offsets = _wan_norm(x_ptr, w_ptr, c, s, rows, valid, rstd, h0, heads, CHUNK, HALF, ROPE)
        scale = tl.max(tl.max(tl.abs(y), axis=2), axis=0) / 127.0 + INT8_EPS  # [CHUNK]
        tl.store(q_ptr + offsets, _int8_codes(y, scale[None, :, None]), mask=valid[:, None, None])
        tl.store(scale_ptr + (b * heads + h0 + tl.arange(0, CHUNK)) * n_scales + pid, scale)


@triton.jit
def _key_norm_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, k_ptr, tokens, heads, eps,
                     CHUNK: tl.constexpr, HALF: tl.constexpr, ROPE: tl.constexpr):  # fmt: skip
    # One program: two consecutive tokens, all heads CHUNK at a time, written normalised in x's dtype (the mean
    # reads them next).
    b = tl.program_id(1).to(tl.int64)
    token = tl.program_id(0) * 2 + tl.arange(0, 2)
    valid = token < tokens
    rows = b * tokens + token
    rstd = _row_rstd(x_ptr, rows, valid, heads, eps, CHUNK, HALF)
    c, s = _rope_rows(cos_ptr, sin_ptr, token, valid, tokens, HALF, ROPE)
    for h0 in range(0, heads, CHUNK):
        y, offsets = _wan_norm(x_ptr, w_ptr, c, s, rows, valid, rstd, h0, heads, CHUNK, HALF, ROPE)
        tl.store(k_ptr + offsets, y.to(k_ptr.dtype.element_ty), mask=valid[:, None, None])


@triton.jit
def _key_quant_kernel(k_ptr, mean_ptr, q_ptr, scale_ptr, tokens, heads, n_scales, D: tl.constexpr):
    # One program: the 32 keys 128 n + 8 j + 2 g + {0, 1} of one head, smoothed, sharing one scale.
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    blk, g = pid // 4, pid % 4
    j = tl.arange(0, 16)[:, None, None]
    i = tl.arange(0, 2)[None, :, None]
    d = tl.arange(0, D)[None, None, :]
    token = blk * 128 + j * 8 + g * 2 + i
    valid = token < tokens
    offsets = (b * tokens + token) * (heads * D) + h * D + d
    dt = k_ptr.dtype.element_ty
    k = tl.load(k_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + b * heads * D + h * D + d).to(tl.float32)
    x = tl.where(valid, _rounded(k - mean, dt), 0.0)  # k - mean in k's dtype, as Sage subtracts it
    scale = tl.max(tl.max(tl.max(tl.abs(x), axis=2), axis=1), axis=0) / 127.0 + INT8_EPS
    tl.store(q_ptr + offsets, _int8_codes(x, scale), mask=valid)
    tl.store(scale_ptr + (b * heads + h) * n_scales + pid, scale)


@triton.jit
def _value_amax_kernel(v_ptr, amax_ptr, tokens, width, ROWS: tl.constexpr, COLS: tl.constexpr):
    # One program: the column maxima of |v| over ROWS tokens, 32 at a time, folded into amax with one atomic max
    rb = tl.program_id(0)
    cb = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    c = cb * COLS + tl.arange(0, COLS)
    amax = tl.zeros((COLS,), dtype=tl.float32)
    for i in range(0, ROWS, 32):
        r = rb * ROWS + i + tl.arange(0, 32)[:, None]
        mask = (r < tokens) & (c[None, :] < width)
        v = tl.load(v_ptr + (b * tokens + r) * width + c[None, :], mask=mask, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(v), axis=0))
    tl.atomic_max(amax_ptr + b * width + c, amax, mask=c < width)


@triton.jit
def _value_fp8_kernel(v_ptr, amax_ptr, out_ptr, scale_ptr, tokens, padded, heads, D: tl.constexpr):
    # One program: 128 token positions of one head, gathered in the fp8 MMA's order, scaled, stored transposed.
    blk = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    pos = tl.arange(0, 128)
    w = pos % 16  # position 4a + 2b + c of a group of 16 holds token 2a + 8b + c
    token = blk * 128 + (pos // 16) * 16 + (w // 4) * 2 + ((w // 2) % 2) * 8 + w % 2
    d = tl.arange(0, D)
    valid = (token < tokens)[:, None]
    x = tl.load(v_ptr + ((b * tokens + token) * (heads * D) + h * D)[:, None] + d[None, :], mask=valid, other=0.0)
    amax = tl.load(amax_ptr + (b * heads + h) * D + d)
    recp = tl.where(amax > 0, tl.math.div_rn(tl.full((D,), FP8_MAX, tl.float32), amax), 0.0)
    y = tl.minimum(tl.maximum(x.to(tl.float32) * recp[None, :], -FP8_MAX), FP8_MAX)
    y = tl.trans(y).to(out_ptr.dtype.element_ty)  # [D, 128]: transposed in float32, then cast once
    out = out_ptr + (b * D + d[:, None]) * (heads * padded) + h * padded + blk * 128 + pos[None, :]
    tl.store(out, y)
    if blk == 0:
        tl.store(scale_ptr + (b * heads + h) * D + d, tl.math.div_rn(amax, tl.full((D,), FP8_MAX, tl.float32)))


def _check(x: torch.Tensor, num_heads: int) -> tuple[int, int, int, int]:
    if x.ndim != 3 or x.shape[-1] % num_heads:
        raise ValueError(f"expected [batch, tokens, heads * head_dim] with {num_heads} heads, got {tuple(x.shape)}")
    b, s, dim = x.shape
    head_dim = dim // num_heads
    if head_dim not in L.HEAD_DIMS:
        raise ValueError(f"SageAttention2's sm90 kernel takes head_dim {' or '.join(map(str, L.HEAD_DIMS))}, not "
                         f"{head_dim}")  # fmt: skip
    return b, s, dim, head_dim


WARPS = {_query_kernel: 2, _key_norm_kernel: 4, _key_quant_kernel: 8, _value_amax_kernel: 1, _value_fp8_kernel: 4}
"""Each kernel's warps, as measured on an H200 at Wan 1.3B's and 14B's shapes (``bench_row_kernels``, 1 to 16
warps: the fastest at both, or within 6 % of it at 1.3B where 14B's fastest is slower there): fixed, not tuned at
the first call, so that a new process compiles one kernel per shape and every GPU reduces in the same order. V's
amax at one warp: 0.52 ms at 14B against 0.78 ms at four."""


def kernel_warps(kernel) -> int:
    """The warps ``kernel`` launches with (``WARPS``)."""
    return WARPS[kernel]


def _launch(kernel, grid: tuple[int, ...], *args, **constants) -> None:
    kernel[grid](*args, **constants, num_warps=kernel_warps(kernel))


def head_chunk(num_heads: int) -> int:
    """Heads the norm kernels hold at a time: the largest power of two dividing ``num_heads``, at most 8 (14B's 40:
    8; 1.3B's 12: 4)."""
    return min(8, num_heads & -num_heads)


def _rope_args(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if rope is None:
        return x, x  # unused (ROPE off)
    return rope[0].float().contiguous(), rope[1].float().contiguous()


def query(
    x: torch.Tensor,
    weight: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    num_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The query projection x [B, S, H * D] -> (int8 [B, S, H, D], scales [B, H, n]): ``sage_layout.quantize_query``
    of ``ops.rms_norm_rope(x, ...)`` (``rope`` None: of ``ops.rms_norm``)."""
    b, s, _, head_dim = _check(x, num_heads)
    x = x.contiguous()
    n_scales = L.query_scale_count(s)
    codes = torch.empty(b, s, num_heads, head_dim, device=x.device, dtype=torch.int8)
    scale = torch.empty(b, num_heads, n_scales, device=x.device, dtype=torch.float32)
    cos, sin = _rope_args(x, rope)
    _launch(
        _query_kernel, (n_scales, b), x, weight.to(x.dtype).contiguous(), cos, sin, codes, scale, s, num_heads,
        n_scales, eps, CHUNK=head_chunk(num_heads), HALF=head_dim // 2, ROPE=rope is not None,
    )  # fmt: skip
    return codes, scale


def key_normed(
    x: torch.Tensor,
    weight: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    num_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The key projection x [B, S, H * D] -> (k [B, S, H, D] normalised as ``query`` does, its mean over the tokens
    [B, 1, H, D]: ``k.mean(1)``, the very reduction SageAttention takes)."""
    b, s, _, head_dim = _check(x, num_heads)
    x = x.contiguous()
    k = torch.empty(b, s, num_heads, head_dim, device=x.device, dtype=x.dtype)
    cos, sin = _rope_args(x, rope)
    _launch(
        _key_norm_kernel, (L.cdiv(s, 2), b), x, weight.to(x.dtype).contiguous(), cos, sin, k, s, num_heads, eps,
        CHUNK=head_chunk(num_heads), HALF=head_dim // 2, ROPE=rope is not None,
    )  # fmt: skip
    return k, k.mean(dim=1, keepdim=True)


def key_quantized(k: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k [B, S, H, D] and its mean [B, 1, H, D] -> ``sage_layout.quantize_key(k - mean)`` (the difference rounded to
    k's dtype)."""
    b, s, h, d = k.shape
    n_scales = L.key_scale_count(s)
    codes = torch.empty(b, s, h, d, device=k.device, dtype=torch.int8)
    scale = torch.empty(b, h, n_scales, device=k.device, dtype=torch.float32)
    _launch(_key_quant_kernel, (n_scales, h, b), k.contiguous(), mean.contiguous(), codes, scale, s, h, n_scales,
            D=d)  # fmt: skip
    return codes, scale


def key(
    x: torch.Tensor,
    weight: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    num_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The key projection -> (int8 [B, S, H, D], scales [B, H, n]): normalised, smoothed, quantized per thread."""
    return key_quantized(*key_normed(x, weight, rope, num_heads, eps))


def value(v: torch.Tensor, num_heads: int, *, storage: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The value projection v [B, S, H * D] (or [B, S, H, D]) -> ``sage_layout.quantize_value``: (fp8 [B, D, H, S'],
    scales float32 [B, H, D])."""
    b, s = v.shape[:2]
    head_dim = v.shape[-1] if v.ndim == 4 else v.shape[-1] // num_heads
    width = num_heads * head_dim
    v = v.contiguous()
    amax = torch.zeros(b, width, device=v.device, dtype=torch.float32)
    grid = (L.cdiv(s, AMAX_ROWS), L.cdiv(width, AMAX_COLS), b)
    _launch(_value_amax_kernel, grid, v, amax, s, width, ROWS=AMAX_ROWS, COLS=AMAX_COLS)
    padded = L.padded_tokens(s)
    out = torch.empty(b, head_dim, num_heads, padded, device=v.device, dtype=storage or torch.float8_e4m3fn)
    scale = torch.empty(b, num_heads, head_dim, device=v.device, dtype=torch.float32)
    _launch(_value_fp8_kernel, (padded // L.K_BLOCK, num_heads, b), v, amax, out, scale, s, padded, num_heads,
            D=head_dim)  # fmt: skip
    return out, scale
