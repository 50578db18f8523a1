"""The one-pass per-row quantization kernels (the eager FP8 / INT8 linears' input) in Triton's CPU interpreter:
their values and scales equal ``dax_core.quant.numerics.quantize`` bit for bit, and the norms they are fused into
match float64; compiled for sm_90 by Triton's own ptxas, their PTX has the IEEE division and the saturating
round-to-nearest-even float8 conversion that bit-exactness on the GPU rests on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.environment import REPO, installed

pytestmark = pytest.mark.skipif(not installed("triton"), reason="Triton is not installed with this PyTorch")


def test_kernels_in_the_interpreter_match_quantize_bit_for_bit():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "tests.unit.fused_quant_interpreted"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    # 4 widths x (3 dtypes + GELU on float32, bf16 and fp16 rows); 3 norm sites x 3 widths, each also writing only its
    # stream and quantized rows; GELU's bounds over every bf16 and fp16 value
    assert len(results) == 4 * 6 + 3 * 3 * 2 + 2
    for name, r in results.items():
        if name.startswith("gelu_bound"):  # every finite value (bf16: 65,279), no breach
            assert r["values"] > 60000 and r["decreases"] == 0 and r["negative_over_bound"] == 0, (name, r)
            continue
        if name.startswith("gelu_quantize"):
            # float32 end to end against float64 GELU: measured 2e-8 to 5e-8; a wrong row, mask or formula is O(1)
            assert r["scale_rel"] < 1e-6 and r["dequantized_rel"] < 1e-6, (name, r)
            continue
        assert r["values"] == 0 and r["scales"] == 0 and not r["codes_differ"], (name, r)
        for key in ("normed_rel", "stream_rel"):  # the norm sites, float32 against float64: measured below 7e-8
            assert r.get(key, 0.0) < 1e-6, (name, r)


def _ptx(kernel, signature: dict[str, str], constexprs: dict[str, object]) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    return triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32)).asm["ptx"]


def test_kernels_compile_for_hopper_with_exact_division_and_rounding():
    from dax_core.models import fused_ops, fused_quant

    rows = {"x_ptr": "*bf16", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32", "width": "i32"}
    const = {"QMAX": 448.0, "ROUND": False, "CHUNK": 512}
    ptx = {
        "quantize_rows/fp8": _ptx(fused_quant._quantize_rows_kernel, rows, {**const, "GELU": False}),
        "quantize_rows/fp8+gelu": _ptx(fused_quant._quantize_rows_kernel, rows, {**const, "GELU": True}),
        "quantize_rows/int8": _ptx(
            fused_quant._quantize_rows_kernel, {**rows, "q_ptr": "*i8"}, {**const, "QMAX": 127.0, "ROUND": True,
                                                                          "GELU": False},
        ),
    }  # fmt: skip
    norm = dict.fromkeys(("x_ptr", "r_ptr", "sum_ptr", "a_ptr", "b_ptr", "out_ptr"), "*bf16")
    norm |= {"gate_ptr": "*fp32", "q_ptr": "*fp8e4nv", "q_scale_ptr": "*fp32", "tokens": "i32", "dim": "i32"}
    norm["eps"] = "fp32"
    for mode, affine in ((0, False), (1, False), (2, True)):
        for store in (True, False):  # False: the quantized rows alone (kernel_ops)
            flags = {"RESIDUAL": mode, "AFFINE": affine, "QUANT": True, "QMAX": 448.0, "ROUND": False, "CHUNK": 512,
                     "UNROLL": 10, "STORE": store}  # fmt: skip
            ptx[f"norm/{mode}/{store}"] = _ptx(fused_ops._norm_kernel, norm, flags)
    # without the output, the only 2-byte stores left are the residual stream's (mode 0 has none)
    assert "st.global.b16" not in ptx["norm/0/False"] and "st.global.v4.b16" not in ptx["norm/0/False"]
    for name, text in ptx.items():
        divisions = set(re.findall(r"\bdiv\.[a-z]+\.f32", text))
        # the scale and x / scale: IEEE (div.rn); the norms' mean may divide approximately, it is not quantization
        assert "div.rn.f32" in divisions, (name, divisions)
        if "int8" not in name:
            assert "cvt.rn.satfinite.e4m3x2.f32" in text, name
    assert "div.full.f32" not in ptx["quantize_rows/fp8"], "an approximate division in the plain quantizer"
    # unrolled ten times (14B's 5120 values, 512 at a time), each pass issues the row's ten loads together (rolled:
    # one per iteration)
    flags = {**flags, "RESIDUAL": 0, "AFFINE": False, "STORE": False}
    assert fused_ops.unroll(5120, 512) == 10
    assert ptx["norm/0/False"].count("ld.global") >= 8 * _ptx(
        fused_ops._norm_kernel, norm, {**flags, "UNROLL": 1}
    ).count("ld.global")
