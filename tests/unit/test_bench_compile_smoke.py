"""The compile benchmark runs end to end (tiny case on the CPU), so its GPU run does not fail on a typo."""

from __future__ import annotations

import json

from tests.benchmarks import bench_compile


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "compile.json"
    argv = ["--case", "tiny", "--device", "cpu", "--backend", "aot_eager", "--reps", "1", "--out", str(out)]
    bench_compile.main([*argv, "--variant", 'int8=[{"kind": "quantize", "dtype": "int8"}]'])
    saved = json.loads(out.read_text())
    assert saved["device"] == "cpu"
    result = saved["variants"]["int8"]
    assert result["accelerations"] == [{"kind": "quantize", "dtype": "int8"}]
    assert len(result["eager_times_s"]) == len(result["compiled_times_s"]) == 1
    assert min(result["eager_times_s"] + result["compiled_times_s"]) > 0
    assert result["compiled_vs_eager_rel_diff"] < 1e-5  # aot_eager runs the same float32 ops
    assert result["warmup_second_process_s"] > 0  # the second process compiled, ran and reported
