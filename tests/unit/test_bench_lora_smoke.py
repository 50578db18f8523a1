"""The LoRA benchmark runs end to end (tiny case on the CPU), so its GPU run does not fail on a typo."""

from __future__ import annotations

import json

from tests.benchmarks import bench_lora


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "lora.json"
    argv = ["--case", "tiny", "--device", "cpu", "--workdir", str(tmp_path / "files"), "--reps", "1", "--out", str(out)]
    bench_lora.main(argv)
    saved = json.loads(out.read_text())
    assert saved["device"] == "cpu" and saved["lora_parameters"] == 69
    assert min(saved["build_s"].values()) > 0 and saved["strength_change_s"] > 0
    assert all(len(times) == 1 and times[0] > 0 for times in saved["forward_s"].values())
    assert len(saved["forward_s"]) == 3
    # the LoRA changed the model, the new strength changed it again, and the warm engine is the fresh build
    assert saved["output_rel_diff_lora_vs_base"] > 1e-2 and saved["output_rel_diff_after_change_vs_lora"] > 1e-3
    assert saved["warm_equals_fresh_build"] is True
    table = out.with_suffix(".md").read_text()
    assert "| strength 1 -> 0.5 on the warm engine |" in table and "Device: cpu" in table
