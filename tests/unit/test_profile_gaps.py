"""``tests.gpu.profile_forward.idle_gaps``: the GPU's idle time between kernels from their (start, end) intervals,
overlapping kernels (two streams) counted busy, and the recurring gaps grouped by the kernels either side."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from tests.gpu.profile_forward import idle_gaps


def test_idle_time_counts_only_where_no_kernel_runs():
    kernels = [
        (0.0, 10.0, "norm"),
        (4.0, 12.0, "side"),  # overlaps norm: no gap, and the GPU is busy until 12
        (20.0, 30.0, "attn"),  # 8 us idle after side
        (31.0, 40.0, "gemm"),  # 1 us: counted idle, below the 5 us threshold of a listed gap
        (50.0, 60.0, "norm"),  # 10 us after gemm
        (70.0, 80.0, "attn"),  # 10 us after norm
        (86.0, 90.0, "gemm"),  # 6 us after attn
    ]
    idle, groups = idle_gaps(list(reversed(kernels)))  # the order given does not matter
    assert idle == pytest.approx(8 + 1 + 10 + 10 + 6)
    assert [(g["before"], g["after"], g["count"], g["total_us"], g["max_us"]) for g in groups] == [
        ("gemm", "norm", 1, 10.0, 10.0),
        ("norm", "attn", 1, 10.0, 10.0),
        ("side", "attn", 1, 8.0, 8.0),
        ("attn", "gemm", 1, 6.0, 6.0),
    ]


def test_a_recurring_gap_is_summed_over_its_occurrences():
    kernels = [(100.0 * i, 100.0 * i + 90.0, "attn") for i in range(4)]  # 10 us idle before each next one
    idle, groups = idle_gaps(kernels, threshold_us=10.0)
    assert idle == pytest.approx(30.0)
    assert groups == [{"before": "attn", "after": "attn", "count": 3, "total_us": 30.0, "max_us": 10.0}]
