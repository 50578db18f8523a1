"""The site-by-site kernel benchmark runs end to end (tiny case on the CPU), so its GPU run does not fail on a typo,
and each figure it derives comes from its own timings."""

from __future__ import annotations

import json
import math

import pytest

from tests.benchmarks import bench_dax_kernels

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "kernels"
    argv = ["--case", "tiny", "--device", "cpu", "--compile-backend", "aot_eager", "--reps", "1", "--out", str(out)]
    results = bench_dax_kernels.main(argv)
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(results))
    md = out.with_suffix(".md").read_text()
    rows = {r["site"]: r for r in results["rows"]}
    assert len(rows) == 7
    for site in ("self-attention from projections", "cross-attention from projections"):  # no SageAttention here
        assert not rows[site]["ms"] and "sageattention" in rows[site]["skipped"]["new"]
    for site, row in rows.items():
        assert site in md
        if "attention" in site:
            continue
        assert set(row["ms"]) == {"compiled", "new"} and min(row["ms"].values()) > 0  # eager kernels: CUDA only
        assert math.isclose(row["new_tb_s"], row["min_bytes"] / (row["ms"]["new"] / 1000) / 1e12)
        saved = (row["ms"]["compiled"] - row["ms"]["new"]) * row["calls_per_forward"] / 1000
        assert math.isclose(row["saved_per_forward_s"], saved)
