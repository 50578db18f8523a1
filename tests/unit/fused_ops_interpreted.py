"""Run the Triton element-wise kernels of ``dax_core.models.fused_ops`` in Triton's interpreter on the CPU (float32)
and print each one's relative error against float64 math, as JSON. Started with TRITON_INTERPRET=1 by
test_fused_ops_interpreted.py: the interpreter must be chosen before Triton is imported."""

from __future__ import annotations

import json

import torch

from dax_core.models import fused_ops
from dax_core.models.rope import rope_cos_sin
from dax_core.models.spec import WAN21_T2V_1_3B, WAN21_T2V_14B
from tests.numerics import rel_error, rms_norm_rope_f64


def main() -> None:
    g = torch.Generator().manual_seed(0)
    errors = {}
    for dim in (1536, 5120, 200):  # 200: not a power of two, so the kernels' masks are exercised
        x = torch.randn(2, 7, dim, generator=g) * 3 + 1
        shift, scale, gate = (torch.randn(2, 1, dim, generator=g) for _ in range(3))
        got = fused_ops.modulated_layer_norm(x, shift, scale, 1e-6)
        ref = torch.nn.functional.layer_norm(x.double(), (dim,), eps=1e-6) * (1 + scale.double()) + shift.double()
        errors[f"modulated_layer_norm/{dim}"] = rel_error(got, ref)
        y = torch.randn(2, 7, dim, generator=g)
        errors[f"gated_residual/{dim}"] = rel_error(fused_ops.gated_residual(x, y, gate), x.double() + y * gate)
    for spec in (WAN21_T2V_1_3B, WAN21_T2V_14B):
        grid = (2, 3, 4)
        x = torch.randn(2, 24, spec.dim, generator=g)
        w = 1 + 0.1 * torch.randn(spec.dim, generator=g)
        cos, sin = rope_cos_sin(spec, grid, "cpu")
        got = fused_ops.rms_norm_rope(x, w, cos, sin, spec.num_heads, 1e-6)
        errors[f"rms_norm_rope/{spec.dim}"] = rel_error(got, rms_norm_rope_f64(x, w, cos, sin, spec.num_heads))
    print(json.dumps(errors))


if __name__ == "__main__":
    main()
