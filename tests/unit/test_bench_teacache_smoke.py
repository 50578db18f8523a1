"""The TeaCache benchmark runs end to end (tiny case on the CPU), so its GPU run does not fail on a typo."""

from __future__ import annotations

import json

from tests.benchmarks import bench_teacache


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "teacache.json"
    results = bench_teacache.main(
        ["--case", "tiny", "--device", "cpu", "--compute-reps", "1", "--reps", "2", "--out", str(out)]
    )
    saved = json.loads(out.read_text())["teacache"]
    assert saved["projection"]["model"][0] == {
        "skipped": 0,
        "wall_s": 50 * saved["model_cache"]["computed_s"],
        "speedup": 1.0,
    }
    assert [row["skipped"] for row in saved["projection"]["cpu"]][-1] == 44
    assert "say nothing about real Wan weights" in bench_teacache.table(results["teacache"])
