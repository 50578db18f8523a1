"""Sequence parallelism on CUDA: the log-sum-exp kernels against float64, and (with 2+ GPUs) the NCCL forward
against the single-GPU forward for every 2-GPU layout of the unit tier."""

from __future__ import annotations

import pytest
import torch

from dax_core.parallel import attention_with_lse
from tests.unit.parallel_worker import CASES, launch

# Kernel accuracy against float64: bf16/fp16 inputs and outputs are rounded to 8/11 bits of mantissa
# (outputs are averages of unit-scale values); float32 runs the memory-efficient kernel in float32.
KERNEL_TOLERANCE = {torch.bfloat16: 1.6e-2, torch.float16: 4e-3, torch.float32: 1e-5}
# The NCCL forward against the single-GPU forward: float32 picks different (but float32) attention kernels
# for whole and chunked sequences; bf16 as in the unit tier.
FORWARD_TOLERANCE = {"fp32": 5e-5, "bf16": 2e-2}
# The variants measured on GPUs under this tolerance. 8-bit linears on GPUs see rows that differ in their last
# bits (other GEMM tilings on half the tokens), so a rounding can flip: their bound is still to be measured.
GPU_VARIANTS = ("plain", "compiled")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_lse_kernels_match_float64(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 300, 4, 128, device="cuda", generator=g).to(dtype)
    k = torch.randn(2, 257, 4, 128, device="cuda", generator=g).to(dtype)
    v = torch.randn(2, 257, 4, 128, device="cuda", generator=g).to(dtype)
    out, lse = attention_with_lse(q, k, v)
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = qd @ kd.transpose(-1, -2) / 128**0.5
    ref_out = (scores.softmax(-1) @ vd).transpose(1, 2)
    assert out.shape == q.shape and out.dtype == dtype
    assert lse.shape == (2, 4, 300) and lse.dtype == torch.float32
    tol = KERNEL_TOLERANCE[dtype]
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=tol)
    torch.testing.assert_close(lse.double(), torch.logsumexp(scores, -1), rtol=0, atol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_nccl_forward_equals_single_gpu(tmp_path):
    cases = {name: case for name, case in CASES[2].items() if case["variant"] in GPU_VARIANTS}
    results = launch(2, cases, tmp_path, device="cuda", timeout_s=300)
    for rank, per_rank in enumerate(results):
        for name, case in cases.items():
            r = per_rank[name]
            tol = FORWARD_TOLERANCE[case["dtype"]] * max(1.0, r["ref_max"])
            assert r["finite"], (rank, name, r)
            assert r["err_overlap"] <= tol and r["err_plain"] <= tol, (rank, name, r)
            assert r["restored_vs_ref"] <= tol, (rank, name, r)  # same kernels again, after disabling
        assert per_rank["checks"]["all_reduce"] == 3.0
