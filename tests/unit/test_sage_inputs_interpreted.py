"""The kernels that write SageAttention2's inputs, in Triton's CPU interpreter: each output equals its PyTorch
definition bit for bit (Wan's RMSNorm and rotary embedding rounded as ``models.ops`` rounds them, Sage's int8
arithmetic, the fp8 V layout); compiled for sm_90 by Triton's own ptxas, their memory accesses are 16-byte vectors,
the int8 scales divide as Sage's own Triton kernels do and V's as IEEE division, and nothing spills."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.environment import REPO, installed

pytestmark = pytest.mark.skipif(not installed("triton"), reason="Triton is not installed with this PyTorch")


def test_kernels_in_the_interpreter_equal_their_definitions_bit_for_bit():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "tests.unit.sage_inputs_interpreted"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 2 * (2 * 5 + 2)  # 2 shapes x (2 norms x 5 outputs + V's 2)
    # everything is exact: the same float32 operations on the same bf16 values
    for name, r in results.items():
        assert r["count"] == 0, (name, r)


def _ptx(kernel, signature: dict[str, str], constexprs: dict[str, object], num_warps: int) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # what a launch specialises on: 16-byte aligned pointers, and the sizes that are multiples of 16 at Wan shapes
    aligned = [i for i, name in enumerate(signature) if name.endswith("_ptr") or name in ("width", "padded")]
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    source = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]


def test_kernels_compile_for_hopper_with_vector_accesses_and_sages_divisions():
    from dax_core.attention import sage_inputs as K

    norm = {"x_ptr": "*bf16", "w_ptr": "*bf16", "cos_ptr": "*fp32", "sin_ptr": "*fp32"}
    sizes = {"tokens": "i32", "heads": "i32"}
    wan14b = {"CHUNK": 8, "HALF": 64, "ROPE": True}
    ptx = {
        "query": _ptx(K._query_kernel, {**norm, "q_ptr": "*i8", "scale_ptr": "*fp32", **sizes, "n_scales": "i32",
                                        "eps": "fp32"}, wan14b, 4),  # 16 int8 codes a thread: 16-byte stores
        "key_norm": _ptx(K._key_norm_kernel, {**norm, "k_ptr": "*bf16", **sizes, "eps": "fp32"}, wan14b, 8),
        "key_quant": _ptx(K._key_quant_kernel, {"k_ptr": "*bf16", "mean_ptr": "*bf16", "q_ptr": "*i8",
                                                "scale_ptr": "*fp32", **sizes, "n_scales": "i32"}, {"D": 128}, 4),
        "value_amax": _ptx(K._value_amax_kernel, {"v_ptr": "*bf16", "amax_ptr": "*fp32", "tokens": "i32",
                                                  "width": "i32"}, {"ROWS": K.AMAX_ROWS, "COLS": K.AMAX_COLS}, 8),
        "value_fp8": _ptx(K._value_fp8_kernel, {"v_ptr": "*bf16", "amax_ptr": "*fp32", "out_ptr": "*fp8e4nv",
                                                "scale_ptr": "*fp32", "tokens": "i32", "padded": "i32",
                                                "heads": "i32"}, {"D": 128}, 8),
    }  # fmt: skip
    for name, text in ptx.items():
        assert ".local" not in text, f"{name} spills to local memory"
        assert "ld.global.v4.b32" in text, f"{name} loads no 16-byte vectors"
        # no bf16 loaded one at a time, but key_quant's mean (128 values a program, broadcast over its 32 keys)
        assert text.count("ld.global.b16") <= (name == "key_quant"), f"{name} loads bf16 one at a time"
    for name in ("query", "key_norm", "key_quant", "value_fp8"):
        assert "st.global.v4.b32" in ptx[name], name
    for name in ("query", "key_quant"):  # Sage's ``amax / 127. + 1e-7`` and ``x / scale``: Triton's default division
        assert set(re.findall(r"\bdiv\.[a-z]+\.f32", ptx[name])) == {"div.full.f32"}, name
    assert set(re.findall(r"\bdiv\.[a-z]+\.f32", ptx["value_fp8"])) == {"div.rn.f32"}
    assert "cvt.rn.satfinite.e4m3x2.f32" in ptx["value_fp8"]
    assert "atom.global" in ptx["value_amax"] and "max" in ptx["value_amax"]
