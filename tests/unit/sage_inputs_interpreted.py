"""Run the kernels that write SageAttention2's inputs (``dax_core.attention.sage_inputs``) in Triton's interpreter on
the CPU, in bf16, and print as JSON how each output differs from its PyTorch definition (``sage_layout`` applied to
``models.ops``' norms): counts of differing codes and scales, and the largest difference. Started with
TRITON_INTERPRET=1 by test_sage_inputs_interpreted.py.

V's fp8 values are compared before the cast (``storage=torch.float32``): the interpreter converts float32 to float8
wrongly at binade edges; the same values cast by PyTorch are the same codes.
"""

from __future__ import annotations

import json

import torch

from dax_core.attention import sage_inputs as K
from dax_core.attention import sage_layout as L
from dax_core.models import ops
from dax_core.models.rope import rope_cos_sin
from dax_core.models.spec import WanSpec


def differ(got: torch.Tensor, ref: torch.Tensor) -> dict:
    assert got.shape == ref.shape and got.dtype == ref.dtype, (got.shape, ref.shape, got.dtype, ref.dtype)
    diff = (got.double() - ref.double()).abs()
    return {"count": int((got != ref).sum()), "max": float(diff.max())}


def main() -> None:
    g = torch.Generator().manual_seed(0)
    out: dict[str, dict] = {}
    # (batch, tokens, heads, head_dim, grid): 3 heads (not a power of two: masked heads); 150 and 70 tokens: partial
    # 16-, 64- and 128-token blocks; a batch of 2 at the smaller shape (the interpreter takes seconds per program)
    for b, s, h, d, grid in ((1, 150, 3, 128, (2, 5, 15)), (2, 70, 2, 64, (1, 7, 10))):
        spec = WanSpec(dim=h * d, num_layers=1, num_heads=h, ffn_dim=64)
        cos, sin = rope_cos_sin(spec, grid, "cpu")
        x = (torch.randn(b, s, h * d, generator=g) * 3 + 0.5).bfloat16()
        w = (1 + 0.1 * torch.randn(h * d, generator=g)).bfloat16()
        for rope in (None, (cos, sin)):
            tag = f"{h}x{d}/{s}/{'rope' if rope else 'norm'}"
            if rope is None:
                normed = ops.rms_norm(x, w, 1e-6).unflatten(-1, (h, -1))
            else:
                normed = ops.rms_norm_rope(x, w, cos, sin, h, 1e-6)
            codes, scale = K.query(x, w, rope, h, 1e-6)
            ref_codes, ref_scale = L.quantize_query(normed)
            out[f"query/{tag}/codes"] = differ(codes, ref_codes)
            out[f"query/{tag}/scales"] = differ(scale, ref_scale)
            k, mean = K.key_normed(x, w, rope, h, 1e-6)
            out[f"key/{tag}/normed"] = differ(k, normed)
            k_codes, k_scale = K.key_quantized(k, mean)
            ref_codes, ref_scale = L.quantize_key(L.smooth_key(normed)[0])
            out[f"key/{tag}/codes"] = differ(k_codes, ref_codes)
            out[f"key/{tag}/scales"] = differ(k_scale, ref_scale)
        v = (torch.randn(b, s, h * d, generator=g) * 2).bfloat16()
        v[0, :, 5] = 0  # an all-zero channel
        values, v_scale = K.value(v, h, storage=torch.float32)
        ref_values, ref_scale = L.quantize_value(v.unflatten(-1, (h, d)), storage=torch.float32)
        out[f"value/{h}x{d}/{s}/values"] = differ(values, ref_values)
        out[f"value/{h}x{d}/{s}/scales"] = differ(v_scale, ref_scale)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
