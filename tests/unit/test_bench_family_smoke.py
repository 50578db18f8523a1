"""The Wan family's forward benchmarks (``python -m dax_core bench --model i2v-14b`` / ``ti2v-5b``, run by
tests/gpu/run_wan22_on_device.sh) run end to end on the CPU with tiny models of the same variants, so their GPU run
does not fail on a typo: each variant's inputs reach DAX and diffusers alike (the peer equals DAX's stock forward in
float32), the full stack is set against the peer from their own timings, the JSON and Markdown say what ran, and the
device script calls only modules, files, models and rungs that exist."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

from dax_core.__main__ import main as dax_main
from dax_core.bench.cases import MODELS, TINY_TI2V, case_for
from dax_core.bench.cli import RUNG_KEYS
from dax_core.bench.inputs import make_inputs
from dax_core.bench.weights import build_model
from dax_core.models.wan import timesteps_of
from tests.numerics import rel_error

pytestmark = pytest.mark.usefixtures("fresh_dynamo")

SCRIPT = Path(__file__).parents[1] / "gpu" / "run_wan22_on_device.sh"
RUNGS = "stock,sage,fp8,compile"  # what the device script asks for
PEER_TOL = 1e-5
"""The unit tier's bound for DAX against diffusers on the same weights in float32 (test_image_models,
test_wan22_model): both compute the same float32 forward, so only rounding differs (measured ~1e-6). A TI2V
timestep given to one model and not the other moves the output by ~1e-1; the CLIP features of the tiny I2V model's
small random weights move it by only ~2e-5, so a test of its own checks that the peer is handed them."""


def _run(tmp_path_factory, model: str) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp(model) / f"forward_{model}"
    argv = ["bench", "--model", model, "--device", "cpu", "--compile-backend", "aot_eager", "--quick", "--peer",
            "--rungs", RUNGS, "--out", str(out)]  # fmt: skip
    assert dax_main(argv) == 0
    return json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".md").read_text()


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
    return _run(tmp_path_factory, "tiny-i2v")


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    return _run(tmp_path_factory, "tiny-ti2v")


def test_the_real_cases_have_the_published_shapes():
    i2v, ti2v = case_for("i2v-14b"), case_for("ti2v-5b")
    assert i2v.name == "Wan2.1-I2V-14B 1280x720x81" and i2v.latent_shape == (1, 36, 21, 90, 160)
    assert i2v.image_tokens == 257 and i2v.tokens == 21 * 45 * 80
    # the Wan2.2 VAE's 16x compression: 48 x 31 x 44 x 80, no CLIP features
    assert ti2v.name == "Wan2.2-TI2V-5B 1280x704x121" and ti2v.latent_shape == (1, 48, 31, 44, 80)
    assert ti2v.image_tokens == 0 and ti2v.frame_tokens == 22 * 40 and ti2v.tokens == 31 * 22 * 40
    # the image tokens' keys, values and attention count: 257 more context tokens than text-to-video
    t2v = case_for("14b")
    assert i2v.flops()["cross_attention"] / t2v.flops()["cross_attention"] == pytest.approx((512 + 257) / 512)
    # the real inputs are what the models' own checks accept (the forward itself is the GPU's to run)
    for case in (i2v, ti2v):
        inputs = make_inputs(case, "cpu", torch.bfloat16, 0)
        case.spec.check_latent(inputs.x.shape)
        case.spec.check_text(inputs.context.shape)
        case.spec.check_image_features(None if inputs.clip_fea is None else inputs.clip_fea.shape, 1)
        grid = timesteps_of(inputs.t, 1, case.spec.patch_size, inputs.x.shape[2:])
        assert grid.shape == ((1, 31) if case is ti2v else (1,))


def test_a_video_size_the_wan22_vae_cannot_take_is_refused_with_the_step():
    with pytest.raises(ValueError, match="multiples of 32"):
        case_for("ti2v-5b", "1280x720x121")  # 720 / 16 = 45 latent rows: not a whole number of 2x2 patches


@pytest.mark.parametrize("run", ["i2v", "ti2v"])
def test_every_rung_ran_or_says_why_and_the_peer_equals_dax(run, request):
    results, md = request.getfixturevalue(run)
    rungs = results["rungs"]
    assert results["device"] == "cpu" and results["command"].startswith("python -m dax_core bench --model tiny-")
    assert list(rungs) == ["stock", "sage", "fp8", "compile", "peer_stock", "peer_attention", "peer_full"]
    assert rungs["sage"]["status"] == "skipped" and "sageattention" in rungs["sage"]["reason"]
    assert rungs["compile"]["accelerations"] == [{"kind": "quantize", "dtype": "fp8"},
                                                 {"kind": "compile", "backend": "aot_eager"}]  # fmt: skip
    for key in ("stock", "fp8", "compile", "peer_stock"):
        r = rungs[key]
        assert r["status"] == "ran" and r["output_finite"] and r["first_s"] > 0
        assert r["forward_s"] == r["times_s"][0] > 0
        assert math.isclose(r["forward_speedup"], rungs["stock"]["forward_s"] / r["forward_s"])
    assert rungs["peer_stock"]["rel_err_vs_stock"] <= PEER_TOL
    assert 1e-4 < rungs["fp8"]["rel_err_vs_stock"] < 0.1  # FP8 moved the output: the lever ran
    for entry in rungs.values():
        assert entry["title"] in md
        if entry["status"] != "ran":
            assert entry["reason"] in md
    assert "upstream" not in results and "Against upstream" not in md  # upstream's ladder is of T2V 14B


@pytest.mark.parametrize("run", ["i2v", "ti2v"])
def test_the_full_stack_is_set_against_each_peer_rung_from_their_own_timings(run, request):
    results, md = request.getfixturevalue(run)
    versus, rungs = results["versus_peer"], results["rungs"]
    assert versus["dax_rung"] == "compile" and versus["dax_forward_s"] == rungs["compile"]["forward_s"]
    assert [row["peer"] for row in versus["rows"]] == ["peer_stock"]  # the others need a GPU or torchao
    row = versus["rows"][0]
    assert math.isclose(row["peer_over_dax"], rungs["peer_stock"]["forward_s"] / rungs["compile"]["forward_s"])
    assert "## DAX against diffusers on the same weights and inputs" in md
    assert f"{row['peer_over_dax']:.2f}x" in md


def test_each_variant_states_what_its_forward_was_given(i2v, ti2v):
    (i2v_results, i2v_md), (ti2v_results, ti2v_md) = i2v, ti2v
    assert i2v_results["model_type"] == "i2v" and i2v_results["latent_shape"] == [1, 36, 3, 8, 8]
    assert "257 CLIP-vision tokens" in i2v_md
    assert ti2v_results["model_type"] == "ti2v" and ti2v_results["latent_shape"] == [1, 48, 3, 4, 4]
    assert "a timestep per latent frame, the first frame at 0" in ti2v_md


def test_the_ti2v_first_frame_timestep_is_one_the_forward_feels():
    # the peer's agreement above covers the per-frame timestep only if it changes the output: here it does
    case = case_for("tiny-ti2v")
    model = build_model(TINY_TI2V, "cpu", torch.float32, 0)
    inputs = make_inputs(case, "cpu", torch.float32, 0)
    assert inputs.t.tolist() == [[0.0, 700.0, 700.0]] and inputs.clip_fea is None
    with torch.no_grad():
        per_frame = inputs(model)
        uniform = model(inputs.x, torch.tensor([700.0]), inputs.context)
    assert rel_error(per_frame, uniform) > 1e-2


def test_the_peer_is_handed_the_image_features_and_a_timestep_per_token():
    seen: dict = {}

    def peer(x, t, context, return_dict, **kwargs):
        seen.update(x=x, t=t, context=context, **kwargs)
        return (x,)

    i2v = make_inputs(case_for("tiny-i2v"), "cpu", torch.float32, 0)
    i2v.diffusers(peer, torch.float32)
    assert seen["encoder_hidden_states_image"] is i2v.clip_fea and i2v.clip_fea.shape == (1, 257, 48)
    assert seen["t"] is i2v.t and seen["context"] is i2v.context
    seen.clear()
    case = case_for("tiny-ti2v")
    ti2v = make_inputs(case, "cpu", torch.float32, 0)
    ti2v.diffusers(peer, torch.float32)
    assert "encoder_hidden_states_image" not in seen
    assert seen["t"].tolist() == [[0.0] * case.frame_tokens + [700.0] * 2 * case.frame_tokens]
    assert seen["t"].shape[1] == case.tokens


def test_the_a14b_projection_is_forty_cfg_steps_of_the_timed_forward_plus_one_swap():
    from tests.benchmarks.bench_expert_swap import STEPS, forward_seconds, markdown, projected_run

    case = case_for("tiny")
    timed = forward_seconds(build_model(case.spec, "cpu", torch.float32, 0), case, torch.device("cpu"))
    assert timed["case"] == case.name and timed["forward_s"] > 0 and timed["first_s"] > 0
    assert timed["stack"] == "eager"
    projected = projected_run(timed["forward_s"], 1.5)
    assert STEPS == 40 and projected["steps"] == 40
    assert math.isclose(projected["resident_s"], 80 * timed["forward_s"])
    assert math.isclose(projected["taking_turns_s"], projected["resident_s"] + 1.5)
    # the table shows each format's figures; one without a forward (--video none) shows dashes, not zeros
    case_row = {"dtype": "fp8", "expert_gib": 13.6, "both_resident_gib": 27.2, "free_gib_both_resident": 112.0,
                "first_offload_s": 4.0, "swap_median_s": 1.5, "host_to_device_gb_s": 9.7}  # fmt: skip
    cases = [{**case_row, "forward": timed, "projected": projected}, {**case_row, "dtype": "bf16"}]
    command = "python -m tests.benchmarks.bench_expert_swap"
    results = {"device": "cpu", "torch": torch.__version__, "command": command, "cases": cases}
    md = markdown(results)
    assert "Command: `python -m tests.benchmarks.bench_expert_swap`" in md
    fp8_row, bf16_row = (line for line in md.splitlines() if line.startswith(("| fp8", "| bf16")))
    assert fp8_row.startswith("| fp8 | eager | 13.6 |") and bf16_row.startswith("| bf16 | — | 13.6 |")
    assert f"| {projected['resident_s']:.1f} | {projected['taking_turns_s']:.1f} |" in fp8_row
    assert bf16_row.endswith("| 1.50 | 9.7 | — | — | — |")


def test_the_device_script_calls_what_exists():
    text = SCRIPT.read_text()
    modules = set(re.findall(r"python3 -m ([\w.]+)", text)) - {"pip"}
    assert {"pytest", "dax_core", "tests.benchmarks.bench_expert_swap"} <= modules
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module
    root = SCRIPT.parents[2]
    paths = re.findall(r"(tests/gpu/test_\w+\.py)", text)
    assert {"tests/gpu/test_image_model_cuda.py", "tests/gpu/test_experts_cuda.py"} <= set(paths)
    assert all((root / p).is_file() for p in paths)
    models = set(re.findall(r"--model ([\w.-]+)", text))
    assert models == {"i2v-14b", "ti2v-5b"} and models <= set(MODELS)
    (rungs,) = re.findall(r'^RUNGS="([\w,]+)"', text, flags=re.M)
    assert rungs == RUNGS and set(rungs.split(",")) <= set(RUNG_KEYS)
