"""The preview benchmark runs end to end (tiny case on the CPU, ComfyUI's own previewer), so its GPU run does not
fail on a typo."""

from __future__ import annotations

import json

from tests.benchmarks import bench_preview


def test_benchmark_smoke(tmp_path, comfyui_importable):
    out, md = tmp_path / "preview.json", tmp_path / "preview.md"
    bench_preview.main(["--case", "tiny", "--device", "cpu", "--step-reps", "1", "--reps", "2", "--out", str(out),
                        "--md", str(md)])  # fmt: skip
    saved = json.loads(out.read_text())
    r = saved["preview"]
    assert saved["command"] == bench_preview.COMMAND and r["previewer"] == "ComfyUI's Latent2RGBPreviewer"
    assert r["latent"] == [1, 16, 3, 8, 8] and r["preview_latent"] == [1, 16, 1, 8, 8]
    assert r["step_s"] > 0 and all(r[k] > 0 for k in ("engine_s", "wire_s", "previewer_s", "jpeg_s"))
    assert r["one_gpu_fraction"] == (r["engine_s"] + r["previewer_s"] + r["jpeg_s"]) / r["step_s"]
    assert "| denoising step (one CFG-batched forward) |" in md.read_text()
