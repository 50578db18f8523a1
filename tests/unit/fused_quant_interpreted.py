"""Run the per-row quantization kernels (``dax_core.models.fused_quant`` and the quantizing norm kernels of
``fused_ops``) in Triton's interpreter on the CPU and print, as JSON, how each one's output compares with
``dax_core.quant.numerics.quantize`` and float64 math. Started with TRITON_INTERPRET=1 by
test_fused_quant_interpreted.py.

The interpreter converts float32 to float8 wrongly at binade edges (127.7 -> 64 instead of 128), so the kernels
store their clamped, rounded float32 values (``storage=torch.float32``) and are compared with ``quantize``'s values
before its cast: the same values cast by the same PyTorch conversion are the same codes. The GPU tier checks the
kernels' own casts bit for bit.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from dax_core.models import fused_ops, fused_quant, prequantized
from dax_core.quant.numerics import SCALE_FLOOR, qmax, quantize
from tests.numerics import rel_error

DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2, "int8": torch.int8}


def precast(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize``'s values just before its cast (and its scales), from the same float32 ops."""
    top = qmax(dtype)
    floored = x.float().abs().amax(dim=-1, keepdim=True).clamp(min=SCALE_FLOOR)
    scaled = (x.float() * (torch.full_like(floored, top) / floored)).clamp(-top, top)  # IEEE: tensor by tensor
    scale = floored / top
    return (scaled.round() if dtype == torch.int8 else scaled), scale


def mismatch(stored: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, dtype: torch.dtype) -> dict:
    """Elements and scales that differ from ``quantize`` (both must be 0), and whether the codes match."""
    ref_values, ref_scale = precast(x, dtype)
    q, s = quantize(x, dtype, per_row=True)
    codes = stored.to(dtype)
    same_codes = (
        torch.equal(codes.view(torch.uint8), q.view(torch.uint8)) if dtype != torch.int8 else torch.equal(codes, q)
    )
    return {
        "values": int((stored != ref_values).sum()),
        "scales": int((scale != ref_scale).sum()) + int((scale != s).sum()),
        "codes_differ": not same_codes,
    }


@triton.jit
def _gelu_values_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n, other=0.0)
    tl.store(out_ptr + i, fused_quant._activation(x, True), mask=i < n)


def gelu_values(x: torch.Tensor) -> torch.Tensor:
    """The quantizer's own GELU of each value of ``x`` (rounded to x's dtype), in float32."""
    out = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    _gelu_values_kernel[(triton.cdiv(x.numel(), 1024),)](x.contiguous(), out, x.numel(), BLOCK=1024)
    return out


def every_value(dtype: torch.dtype, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Every finite value of a 16-bit float dtype: (non-negative ascending, negative), from its bit patterns."""
    bits = torch.arange(0, 1 << 15, dtype=torch.int32, device=device).to(torch.int16)
    values = bits.view(dtype)
    finite = values[torch.isfinite(values)]
    return finite, -finite[1:]


def gelu_bound_breaches(dtype: torch.dtype, device: str = "cpu") -> dict:
    """Where the rounded GELU breaks what ``fused_quant.gelu_amax`` rests on: a non-negative value whose GELU reaches
    the bound while a smaller value's GELU is larger, or a negative value whose |GELU| reaches the bound. Both counts
    must be 0. (Below the bound the quantizer takes every value's GELU: the interpreter's subnormal arithmetic is
    not monotone there.)"""
    positive, negative = every_value(dtype, device)
    g = gelu_values(positive)
    bound = float(fused_quant.GELU_NEGATIVE_BOUND.value)
    over = gelu_values(negative).abs() >= bound
    return {"decreases": int(((g >= bound) & (g < g.cummax(0).values)).sum()), "negative_over_bound": int(over.sum()),
            "values": positive.numel() + negative.numel()}  # fmt: skip


def gelu_rows(dtype: torch.dtype, width: int, g: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """16-bit rows for the GELU quantizer: large values (amax from the row's max), small ones and all-negative ones
    (GELU of the max below the bound: every value's GELU), one whose largest |GELU| is a negative value's."""
    x = torch.randn(6, width, generator=g) * torch.tensor([[3.0], [1.0], [0.05], [0.2], [1.0], [1.0]])
    x[4] = -x[4].abs()
    x[5] = -x[5].abs() * 0.75
    x[5, :7] = 0.01  # tiny positives: GELU of the max is 0.005, the amax |GELU(-0.75)| about 0.17
    return x.to(dtype).to(device)


def rows(width: int, g: torch.Generator) -> torch.Tensor:
    """Rows of varied magnitude, an all-zero row, a row of tiny values, and rows whose scale is exactly 1 with values
    on rounding ties (x.5 for int8)."""
    x = torch.randn(9, width, generator=g) * torch.logspace(-3, 3, 9).unsqueeze(1)
    x[3] = 0.0
    x[4] *= 1e-30
    ties = torch.arange(width, dtype=torch.float32) % 254 - 126.5  # -126.5 ... 126.5
    ties[0] = 127.0  # amax 127: the int8 scale is exactly 1
    return torch.cat([x, ties.unsqueeze(0)])


def layer_norm64(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm in float64, then ``* weight + bias`` (a modulation passes 1 + scale and shift)."""
    return F.layer_norm(t.double(), (t.shape[-1],), eps=1e-6) * weight + bias


def main() -> None:
    g = torch.Generator().manual_seed(0)
    out: dict[str, dict] = {}
    for width in (200, 1536, 5120, 8960):  # 200: masks; 8960: 1.3B's ffn.2 input, 17.5 chunks (a masked last one)
        x = rows(width, g)
        for name, dtype in DTYPES.items():
            stored, scale = fused_quant.quantize_rows(x, dtype, storage=torch.float32)
            out[f"quantize_rows/{name}/{width}"] = mismatch(stored, scale, x, dtype)
        h = torch.randn(6, width, generator=g) * 3
        stored, scale = fused_quant.quantize_rows(h, torch.float8_e4m3fn, gelu=True, storage=torch.float32)
        gelu = F.gelu(h.double(), approximate="tanh")
        out[f"gelu_quantize_rows/{width}"] = {
            "scale_rel": rel_error(scale, gelu.abs().amax(-1, keepdim=True) / 448.0),
            "dequantized_rel": rel_error(stored * scale, gelu),
        }
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):  # the amax from each row's max
            h16 = gelu_rows(dtype, width, g)
            stored, scale = fused_quant.quantize_rows(h16, torch.float8_e4m3fn, gelu=True, storage=torch.float32)
            out[f"gelu_rows_exact/{name}/{width}"] = mismatch(stored, scale, gelu_values(h16), torch.float8_e4m3fn)
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        out[f"gelu_bound/{name}"] = gelu_bound_breaches(dtype)
    f32, e4m3 = torch.float32, torch.float8_e4m3fn
    for dim in (1536, 5120, 200):
        x = torch.randn(2, 7, dim, generator=g) * 3 + 1
        r = torch.randn(2, 7, dim, generator=g)
        shift, scale, gate = (torch.randn(2, 1, dim, generator=g) for _ in range(3))
        w, b = 1 + 0.1 * torch.randn(dim, generator=g), 0.1 * torch.randn(dim, generator=g)
        modulated = (1 + scale.double(), shift.double())
        sites = {
            "modulated": (
                (None, fused_ops.modulated_layer_norm(x, shift, scale, 1e-6, e4m3, storage=f32)),
                (None, layer_norm64(x, *modulated)),
            ),
            "add_modulated": (
                fused_ops.add_modulated_layer_norm(x, r, shift, scale, 1e-6, e4m3, storage=f32),
                (x.double() + r, layer_norm64(x.double() + r, *modulated)),
            ),
            "gated_affine": (
                fused_ops.gated_residual_layer_norm(x, r, gate, w, b, 1e-6, e4m3, storage=f32),
                (x.double() + r * gate, layer_norm64(x.double() + r * gate, w.double(), b.double())),
            ),
        }
        quantized_only = {  # the same sites writing only the stream and the quantized rows (kernel_ops)
            "modulated": fused_ops.norm_quantized(x, None, None, shift, scale, 1e-6, False, e4m3, storage=f32),
            "add_modulated": fused_ops.norm_quantized(x, r, None, shift, scale, 1e-6, False, e4m3, storage=f32),
            "gated_affine": fused_ops.norm_quantized(x, r, gate, w, b, 1e-6, True, e4m3, storage=f32),
        }
        for site, ((stream, normed), (stream_ref, normed_ref)) in sites.items():
            attached = prequantized.take(normed, e4m3)
            assert attached is not None, site
            entry = mismatch(attached[0], attached[1], normed.reshape(-1, dim), e4m3)
            entry["normed_rel"] = rel_error(normed, normed_ref)
            if stream is not None:
                entry["stream_rel"] = rel_error(stream, stream_ref)
            out[f"{site}/{dim}"] = entry
            only_stream, q, q_scale = quantized_only[site]
            out[f"{site}/{dim}/quantized_only"] = {
                "values": int((q != attached[0]).sum()),
                "scales": int((q_scale != attached[1]).sum()),
                "codes_differ": (only_stream is None) != (stream is None)
                or (stream is not None and not torch.equal(only_stream, stream)),
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
