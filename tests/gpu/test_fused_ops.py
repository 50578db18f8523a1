"""The Triton element-wise kernels against their PyTorch twins and against float64, at Wan shapes."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="Triton is not installed with this PyTorch: the eager path uses PyTorch ops")

from dax_core.models import fused_ops, ops
from dax_core.models.rope import rope_cos_sin
from dax_core.models.spec import WAN21_T2V_1_3B, WAN21_T2V_14B
from tests.numerics import rel_error, rms_norm_rope_f64

DT = torch.bfloat16


@pytest.mark.parametrize("dim", [1536, 5120, 200])
def test_modulated_layer_norm(dim):
    x = torch.randn(2, 777, dim, device="cuda", dtype=DT) * 3 + 1
    shift = torch.randn(2, 1, dim, device="cuda")
    scale = torch.randn(2, 1, dim, device="cuda") * 0.3
    got = fused_ops.modulated_layer_norm(x, shift, scale, 1e-6)
    torch_path = ops.modulated_layer_norm(x.cpu(), shift.cpu(), scale.cpu(), 1e-6)
    f64 = torch.nn.functional.layer_norm(x.double(), (dim,), eps=1e-6) * (1 + scale.double()) + shift.double()
    # one bf16 rounding of the output: ~2^-9 relative; anything structural (wrong batch row, mean) is O(1)
    assert rel_error(got.cpu(), torch_path) < 4e-3
    assert rel_error(got, f64) < 4e-3
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("dim", [1536, 5120])
def test_gated_residual(dim):
    x, y = (torch.randn(2, 1001, dim, device="cuda", dtype=DT) for _ in range(2))
    gate = torch.randn(2, 1, dim, device="cuda")
    got = fused_ops.gated_residual(x, y, gate)
    expected = x.double() + y.double() * gate.double()
    assert rel_error(got, expected) < 4e-3  # one bf16 rounding of the output, as above
    assert torch.equal(got.cpu(), ops.gated_residual(x.cpu(), y.cpu(), gate.cpu()))


@pytest.mark.parametrize("spec", [WAN21_T2V_1_3B, WAN21_T2V_14B], ids=["1.3b", "14b"])
def test_rms_norm_rope(spec):
    grid = (3, 6, 10)
    tokens = grid[0] * grid[1] * grid[2]
    x = torch.randn(2, tokens, spec.dim, device="cuda", dtype=DT)
    w = (1 + 0.1 * torch.randn(spec.dim, device="cuda")).to(DT)
    cos, sin = rope_cos_sin(spec, grid, "cuda")
    out = fused_ops.rms_norm_rope(x, w, cos, sin, spec.num_heads, 1e-6)
    torch_path = ops.rms_norm_rope(x.cpu(), w.cpu(), cos.cpu(), sin.cpu(), spec.num_heads, 1e-6)
    assert torch.isfinite(out).all()
    # identical roundings by construction; the only difference is the order of the float32 sum of squares
    assert rel_error(out.cpu(), torch_path) < 1e-3
    assert rel_error(out, rms_norm_rope_f64(x, w, cos, sin, spec.num_heads)) < 8e-3
