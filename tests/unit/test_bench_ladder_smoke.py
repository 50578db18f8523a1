"""``python -m dax_core bench`` runs end to end on the CPU with a tiny model (so its GPU run does not fail on a typo),
and what it reports is computed from what it measured: each ratio from its own timings, each rung's floor from its
own kernels, the projections from the stated schedules, the fidelity of every rung finite and quantization's visible.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from dax_core.__main__ import main as dax_main
from dax_core.bench import rungs as R

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ladder") / "ladder_tiny"
    argv = ["bench", "--model", "tiny", "--device", "cpu", "--compile-backend", "aot_eager", "--quick", "--peer",
            "--out", str(out)]  # fmt: skip
    assert dax_main(argv) == 0
    return json.loads(out.with_name("ladder_tiny.json").read_text()), out.with_name("ladder_tiny.md").read_text()


def test_every_rung_ran_or_says_why_not(ladder):
    results, md = ladder
    rungs = results["rungs"]
    assert results["device"] == "cpu" and results["reps"] == 1
    expected = ["stock", "sage", "fp8", "compile", "compile_sdpa", "graphs", "teacache", "magcache", "distill"]
    assert list(rungs) == [*expected, "peer_stock", "peer_attention", "peer_full"]  # --quick: no INT8 rung
    assert rungs["sage"]["status"] == "skipped" and "sageattention" in rungs["sage"]["reason"]
    assert rungs["graphs"]["status"] == "skipped" and "CUDA GPU" in rungs["graphs"]["reason"]
    assert rungs["peer_attention"]["status"] == "skipped" and "CUDA" in rungs["peer_attention"]["reason"]
    assert rungs["peer_full"]["status"] == "skipped"
    # a skipped rung's successors build on what ran: FP8 without SageAttention, compile on top of it
    assert rungs["fp8"]["accelerations"] == [{"kind": "quantize", "dtype": "fp8"}]
    assert rungs["compile"]["accelerations"] == [{"kind": "quantize", "dtype": "fp8"},
                                                 {"kind": "compile", "backend": "aot_eager"}]  # fmt: skip
    for entry in rungs.values():
        assert entry["title"] in md
        if entry["status"] != "ran":
            assert entry["reason"] in md


def test_ratios_and_floors_come_from_the_run_s_own_timings(ladder):
    results, _ = ladder
    rungs = results["rungs"]
    stock = rungs["stock"]
    assert stock["rel_err_vs_stock"] == 0.0
    for key in ("stock", "fp8", "compile", "compile_sdpa", "peer_stock"):
        r = rungs[key]
        assert len(r["times_s"]) == 1 and r["forward_s"] == r["times_s"][0] > 0 and r["first_s"] > 0
        assert r["step_s"] == 2 * r["forward_s"]
        assert r["projected_s"] == R.STEPS * r["step_s"]
        assert math.isclose(r["forward_speedup"], stock["forward_s"] / r["forward_s"])
        assert math.isclose(r["speedup"], stock["projected_s"] / r["projected_s"])
        assert r["output_finite"] and math.isfinite(r["rel_err_vs_stock"])
        if not r.get("peer"):
            floor = results["floors"][r["floor"]]
            kernels = floor["kernels"]
            assert len(kernels) == 12 and all(k["s"] > 0 for k in kernels.values())
            assert math.isclose(floor["floor_kernels_apart_s"], 2 * sum(k["s"] for k in kernels.values()))  # 2 blocks
            assert floor["floor_s"] > 0  # the same kernels back to back, timed as one sequence
            assert math.isclose(r["x_floor"], r["forward_s"] / floor["floor_s"])
    assert rungs["fp8"]["floor"] != stock["floor"] and rungs["compile"]["floor"] == rungs["fp8"]["floor"]
    assert rungs["compile_sdpa"]["accelerations"] == [{"kind": "quantize", "dtype": "fp8"},
                                                      {"kind": "compile", "backend": "aot_eager"}]  # fmt: skip
    # FP8 moves the output (e4m3's 2^-4 relative rounding, averaged over a forward: ~1e-3 to 1e-2), a lever that
    # did nothing would leave it at 0; diffusers on the same weights agrees with the stock rung to bf16 rounding
    assert 1e-4 < rungs["fp8"]["rel_err_vs_stock"] < 0.1
    assert rungs["compile"]["rel_err_vs_stock"] < 0.1
    assert rungs["peer_stock"]["rel_err_vs_stock"] < 0.05


def test_schedule_rungs_project_their_stated_schedules(ladder):
    results, _ = ladder
    rungs = results["rungs"]
    tea, mag, distill = rungs["teacache"], rungs["magcache"], rungs["distill"]
    assert tea["pattern"] == R.spread_skips(R.STEPS, R.TEACACHE_SKIPS, R.TEACACHE_RETENTION)
    assert tea["skipped_steps"] == R.TEACACHE_SKIPS and tea["pattern"].startswith("C" * R.TEACACHE_RETENTION)
    for r in (tea, mag):
        computed = r["pattern"].count("C")
        assert len(r["pattern"]) == R.STEPS and r["pattern"].endswith("C")
        assert 0 < r["skipped_s"] and 0 < r["computed_s"]
        assert math.isclose(r["projected_s"], 2 * (computed * r["computed_s"] + r["skipped_steps"] * r["skipped_s"]))
    assert 0 < mag["skipped_steps"] < R.STEPS
    best = rungs[distill["on"]]
    assert distill["pattern"] == "C" * R.DISTILL_STEPS and not distill["cfg"]
    assert math.isclose(distill["projected_s"], R.DISTILL_STEPS * best["forward_s"])
    # the fastest dense rung whose model is still built (FP8's became the compile rung's)
    assert best["forward_s"] == min(rungs[k]["forward_s"] for k in ("stock", "compile", "compile_sdpa"))
    up = {row["ours"]: row for row in results["upstream"]["rows"] if row["ours"]}
    assert up["stock"]["ours_projected_s"] == rungs["stock"]["projected_s"]
    assert up["teacache"]["ours_speedup"] == tea["speedup"]


def test_the_ab_rungs_run_only_when_named_and_build_from_the_weights(tmp_path):
    out = tmp_path / "ab"
    argv = ["bench", "--model", "tiny", "--device", "cpu", "--compile-backend", "aot_eager", "--quick",
            "--rungs", "full_dax", "--out", str(out)]  # fmt: skip
    assert dax_main(argv) == 0
    rungs = json.loads(out.with_name("ab.json").read_text())["rungs"]
    assert list(rungs) == ["stock", "full_dax"]  # the default ladder (above) has none of them
    assert rungs["full_dax"]["status"] == "skipped" and "sageattention" in rungs["full_dax"]["reason"]
    rung = next(r for r in R.dense_rungs("aot_eager") if r.key == "full_dax")
    assert rung.base == "stock" and rung.side
    assert rung.adds == (
        {"kind": "quantize", "dtype": "fp8", "input_kernels": "dax"},
        {"kind": "attention", "backend": "sage", "sage_inputs": "fused"},
        {"kind": "compile", "backend": "aot_eager"},
    )


def test_a_run_cut_short_reports_the_ratios_of_what_it_measured(tmp_path, monkeypatch):
    from dax_core.bench.ladder import Ladder

    def cut_short(self, inputs):
        raise RuntimeError("the device's time ran out")

    monkeypatch.setattr(Ladder, "run_schedules", cut_short)
    out = tmp_path / "cut"
    argv = ["bench", "--model", "tiny", "--device", "cpu", "--quick", "--rungs", "fp8", "--out", str(out)]
    with pytest.raises(RuntimeError, match="time ran out"):
        dax_main(argv)
    rungs = json.loads(out.with_name("cut.json").read_text())["rungs"]
    fp8, stock = rungs["fp8"], rungs["stock"]
    assert math.isclose(fp8["forward_speedup"], stock["forward_s"] / fp8["forward_s"])
    assert math.isclose(fp8["x_floor"], fp8["forward_s"] / fp8["floor_s"])
    assert f"{fp8['forward_speedup']:.2f}x" in out.with_name("cut.md").read_text()


def test_a_failed_rung_reads_as_one_line_of_its_table():
    from dax_core.bench.cases import case_for
    from dax_core.bench.ladder import Ladder, LadderSettings
    from dax_core.bench.report import markdown

    reports: list[str] = []
    ladder = Ladder(LadderSettings(case=case_for("tiny", None), device=torch.device("cpu")),
                    lambda results: reports.append(markdown(results)))  # fmt: skip
    ladder.record_peer("peer_stock", "peer: stock", lambda: torch.ones(2), torch.nn.Linear(2, 2), "defaults")
    ladder.skip_peer("peer_full", "peer: compiled", RuntimeError("dynamo stopped\n  Explanation: a long story"))
    row = next(line for line in reports[-1].splitlines() if line.startswith("| peer: compiled"))
    assert row == "| peer: compiled | failed: RuntimeError: dynamo stopped |  |  |  |  |  |  |  |  |  |"
    assert "long story" not in reports[-1]
