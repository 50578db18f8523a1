"""The radial benchmark runs end to end (tiny case on the CPU, exact masked kernel), so its one GPU run does not
fail on a typo, and what it reports is what was computed."""

from __future__ import annotations

import json

import pytest

from dax_core.attention.radial_mask import radial_block_table
from tests.benchmarks import bench_radial

BLOCK = 16


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("radial")
    argv = ["--device", "cpu", "--case", "tiny", "--block", str(BLOCK), "--dense-backend", "sdpa",
            "--kernels", "reference", "sparge", "--compile-backend", "aot_eager", "--reps", "1", "--warmup", "0",
            "--sample-rows", "64", "--out", str(out / "radial.json"), "--md", str(out / "radial.md")]  # fmt: skip
    bench_radial.main(argv)
    return json.loads((out / "radial.json").read_text()), (out / "radial.md").read_text()


def test_every_stage_ran_and_the_markdown_names_device_and_command(results):
    saved, md = results
    assert set(saved["stages"]) == set(bench_radial.STAGES)
    assert not [s for s in saved["stages"].values() if "error" in s]
    assert saved["device"] == "cpu" and "sparge" in saved["kernels"]
    assert saved["kernels"]["sparge"].startswith("unavailable: ")  # recorded with the reason, not skipped silently
    assert md.startswith("# Radial attention on cpu") and "--case tiny" in md


def test_the_mask_and_attention_rows_report_what_was_computed(results):
    saved, _ = results
    grid = bench_radial.grid_of(bench_radial.CASES_HERE["tiny"])
    density = radial_block_table(grid, 0.2, BLOCK).density
    assert saved["stages"]["masks"]["tiny"]["density"] == pytest.approx(density)
    rows = saved["stages"]["attention"]["tiny"]["rows"]
    assert rows["reference radial"]["density"] == pytest.approx(density) and rows["reference full"]["density"] == 1.0
    assert [rows[f"reference random {p:.2f}"]["density"] for p in bench_radial.RANDOM_DENSITIES] == sorted(
        (rows[f"reference random {p:.2f}"]["density"] for p in bench_radial.RANDOM_DENSITIES), reverse=True
    )
    assert all(r["ms"] > 0 for r in rows.values())


def test_fidelity_separates_the_masks_error_from_the_kernels(results):
    saved, _ = results
    for inputs, f in saved["stages"]["fidelity"]["tiny"].items():
        # the exact masked kernel computes the masked softmax itself: only float32 rounding between the two
        assert f["reference vs masked"] < 1e-5, inputs
        assert f["reference vs dense"] == pytest.approx(f["mask_vs_dense"], rel=1e-3, abs=1e-5), inputs
        assert f["dense sdpa vs dense"] < 1e-5, inputs
        assert 0 < f["softmax_mass_in_mask"] <= 1
    narrow = saved["stages"]["fidelity"]["tiny"]["decay narrow"]
    wide = saved["stages"]["fidelity"]["tiny"]["decay wide"]
    assert narrow["softmax_mass_in_mask"] > wide["softmax_mass_in_mask"]  # a wider decay leaves more outside


def test_forward_stage_projects_from_its_own_measurements(results):
    saved, _ = results
    fw = saved["stages"]["forward"]
    t_dense, t_radial = fw["dense"]["s"], fw["radial"]["s"]
    assert fw["projected_50_steps_s"]["radial"] == pytest.approx(2 * (12 * t_dense + 38 * t_radial))
    assert fw["projected_50_steps_s"]["dense"] == pytest.approx(100 * t_dense)
    assert fw["radial_vs_dense_rel_diff"] > 1e-4  # the radial forward really ran a sparse mask
    d = fw["density"]
    layers = bench_radial.CASES_HERE["tiny"].spec.num_layers
    sparse = (1 + (layers - 1) * d) / layers
    assert fw["distill"]["densities"] == pytest.approx([1.0, sparse, sparse, sparse])
    assert fw["distill"]["run_s"] == pytest.approx(sum(fw["distill"]["steps_s"]))
