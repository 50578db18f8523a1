"""The Triton attention kernel of ``tests/benchmarks/bench_dax_attention.py`` in Triton's CPU interpreter: on
SageAttention2's prepared inputs it computes ``sage_layout.attend`` (the sm90 kernel's arithmetic on the dequantized
inputs), in every configuration the benchmark times, before a GPU run spends time on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.environment import REPO, installed

pytestmark = pytest.mark.skipif(not installed("triton"), reason="Triton is not installed with this PyTorch")

SCRIPT = """
import json, torch
from dax_core.attention import sage_layout as L
from tests.benchmarks import bench_dax_attention as B
torch.manual_seed(0)
q, k, v = (torch.randn(2, 300, 2, 128).bfloat16() for _ in range(3))  # 300: a partial block of 16 and of 128
inputs = B.prepared(q, k + 0.5, v, storage=torch.float32)  # V's values kept in float32: P is not rounded to fp8
ref = L.attend(inputs[:2], inputs[2:4], inputs[4:], 128 ** -0.5, torch.float32)
out = {}
for config in B.CONFIGS:
    got = B.attend(*inputs, 128 ** -0.5, torch.float32, config=config)
    out[str(config)] = ((got - ref).norm() / ref.norm()).item()
print(json.dumps(out))
"""


def test_the_benchmarks_attention_kernel_computes_the_sm90_kernels_arithmetic():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == 7
    # float32 sums in another order (measured 5e-7); a wrong scale, key order or mask is off by 1e-2 or more
    assert all(e < 1e-5 for e in errors.values()), errors
