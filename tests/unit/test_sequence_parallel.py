"""Sequence parallelism on CPU with gloo: the parallel forward equals the single-process forward.

Each world size is one launch of N worker processes (tests/unit/parallel_worker.py) that run every case
of that size; the tests below read what each rank measured. Token counts are not multiples of the
number of slices (45 tokens; 5 tokens, where with 4 slices the last rank holds only padding).

Every layout runs plain, and others also with accelerations (``VARIANTS`` in parallel_worker.py): blocks
compiled (regional torch.compile, fullgraph), FP8 and INT8 linears (per token, per channel), TeaCache,
TeaCache with 8-bit linears, radial attention (eager and compiled) on a video of 8 frames, and a timestep per latent
frame with the first frame's 0 (Wan2.2 TI2V's, whose per-token modulation is cut at the slices). A model with
TeaCache runs a short ``WanEngine.sample`` on every rank, and every rank must take the schedule of one lone
process. Besides, each rank builds an engine from a weights file with
``build_engine``, as a worker group's rank does.
"""

from __future__ import annotations

import pytest
import torch

from dax_core.accelerations import BuildEnv
from dax_core.runtime.engine import WanEngine
from tests.unit import parallel_worker as worker
from tests.unit.parallel_worker import CASES, launch

# float32 end to end: the parallel run changes only the order of float32 sums (per-head attention blocks,
# log-sum-exp merges); 1e-5 of the output's scale leaves 10x room over what is measured. A padded key that
# leaked into attention, a wrong slice or a wrong head order moves outputs by 1e-3 and more. Quantized linears
# take each token's row alone, so they see only those reorderings: one forward with FP8 or INT8 linears measures
# 0 with Ulysses (the same rows, bit for bit) and <= 3e-7 of the scale in the ring. TeaCache runs compare the
# latents after 8 euler steps: 0 with Ulysses, <= 6e-7 of the scale in the ring.
# bfloat16: both runs round every activation to 8 bits of mantissa, in different places; the tolerance
# is a few bf16 steps (2^-8 = 4e-3) of the output's scale.
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}
# A sampling run with 8-bit linears is compared differently. Its ring merges reorder float32 sums, so an activation
# that sits within a last bit of an 8-bit rounding boundary can round to the neighbouring level (one step: INT8 1/127
# of its row's largest value, FP8 up to 1/8 of its own), and 8 sampling steps carry that on: the largest element
# differs by 3e-5 to 1.3e-4 of the scale, depending on the machine's float32 kernels. Such flips are rare (about one
# in 10^6 roundings), while quantization rounds every activation: so the parallel latent must be much closer to one
# process's latent than the 8-bit latent is to the unquantized one (Q, measured in the same case: 1.4e-3 FP8, 4.3e-4
# INT8, relative Frobenius). Measured 2-2.4 % of Q; allowed 20 %. An error of the split in the quantized path (scales
# taken on the wrong rows, a padded token quantized with the others) moves the latent by about Q and fails; the ring
# merge itself is held to 1e-5 by the float32 runs of the same layouts.
SAMPLED_8BIT_FRACTION_OF_Q = 0.2
# Overlapped and plain schedules run the same kernels on the same numbers, cut into units: a forward may differ by
# the last bit of a float32 sum reordered inside the attention kernel; 8 sampling steps carry such bits on
# (measured 4.7e-7 of the scale, hybrid).
OVERLAP_TOLERANCE = {"forward": 1e-6, "sampled": 1e-5}


def tolerance(case: dict) -> float:
    """How far a parallel output (or sampled latent) may be from the single-process one, relative to its scale."""
    return TOLERANCE[case["dtype"]]


def overlap_tolerance(case: dict) -> float:
    """How far the overlapped schedule's output may be from the plain schedule's, relative to its scale."""
    return OVERLAP_TOLERANCE["sampled" if worker.VARIANTS[case["variant"]].caches else "forward"]


def sampled_8bit(case: dict) -> bool:
    variant = worker.VARIANTS[case["variant"]]
    return variant.caches and variant.quantizes


CACHED_CASES = [(w, n) for w, cases in CASES.items() for n, c in cases.items() if worker.VARIANTS[c["variant"]].caches]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """world size -> every rank's results, each world launched once, when first asked for."""
    done: dict[int, list[dict]] = {}

    def get(world: int) -> list[dict]:
        if world not in done:
            try:
                done[world] = launch(world, CASES[world], tmp_path_factory.mktemp(f"world{world}"))
            except RuntimeError as e:
                pytest.fail(str(e))
        return done[world]

    return get


ALL_CASES = [(world, name) for world, cases in CASES.items() for name in cases]


@pytest.mark.parametrize(("world", "name"), ALL_CASES)
def test_parallel_forward_equals_single_process(runs, world, name):
    case = CASES[world][name]
    tol = tolerance(case)
    for rank, results in enumerate(runs(world)):
        r = results[name]
        assert r["finite"], (rank, r)
        if sampled_8bit(case):
            assert r["quant_shift"] > 1e-4, (rank, r)  # the 8-bit linears really ran
            assert max(r["rel_overlap"], r["rel_plain"]) <= SAMPLED_8BIT_FRACTION_OF_Q * r["quant_shift"], (rank, r)
            continue
        scale = max(1.0, r["ref_max"])
        assert r["err_overlap"] <= tol * scale, (rank, r)
        assert r["err_plain"] <= tol * scale, (rank, r)


@pytest.mark.parametrize(("world", "name"), ALL_CASES)
def test_overlapped_and_plain_schedules_agree(runs, world, name):
    case = CASES[world][name]
    tol = overlap_tolerance(case)
    for rank, results in enumerate(runs(world)):
        r = results[name]
        if sampled_8bit(case):  # a carried bit may flip a rounding here too
            assert r["rel_overlap_vs_plain"] <= SAMPLED_8BIT_FRACTION_OF_Q * r["quant_shift"], (rank, r)
        else:
            assert r["overlap_vs_plain"] <= tol * max(1.0, r["ref_max"]), (rank, r)


@pytest.mark.parametrize(("world", "name"), ALL_CASES)
def test_disabling_restores_the_single_process_forward(runs, world, name):
    for rank, results in enumerate(runs(world)):
        assert results[name]["restored_vs_ref"] == 0.0, rank


RADIAL_CASES = [(w, n) for w, cases in CASES.items() for n, c in cases.items() if worker.VARIANTS[c["variant"]].radial]
# the mask's effect on the output of these runs (half the pairs of one layer of two left out, random weights):
# measured 2.0e-3 relative; a mask not applied: float32 rounding only (the 1e-5 tolerance above bounds it)
RADIAL_MOVES_OUTPUT = 1e-4


@pytest.mark.parametrize(("world", "name"), RADIAL_CASES)
def test_radial_runs_are_sparse_and_rings_skip_the_chunks_the_mask_leaves_empty(runs, world, name):
    """The parallel runs compared above attend through the mask (their output is not the dense one), and a ring
    skips the chunks whose window is empty: rank 0's first frames meet nothing in the far chunks (eager runs
    only; a compiled block runs the empty window)."""
    case = CASES[world][name]
    compiled = "compiled" in case["variant"]
    for rank, results in enumerate(runs(world)):
        r = results[name]
        assert r["sparse_shift"] > RADIAL_MOVES_OUTPUT, (rank, r)
        chunks = r["ring_chunks"]
        if case["ring"] == 1 or compiled:
            assert chunks["skipped"] == 0, (rank, chunks)
        else:
            assert chunks["computed"] > 0, (rank, chunks)
            if case["ulysses"] == 1 and rank == 0:
                assert chunks["skipped"] > 0, (rank, chunks)


@pytest.mark.parametrize("world", sorted(CASES))
def test_misconfigurations_are_clear_errors(runs, world):
    for rank, results in enumerate(runs(world)):
        checks = results["checks"]
        assert (
            f"the process group has {world} ranks but the parallel config is for {2 * world} GPUs"
            in (checks["wrong_world"])
        ), rank
        assert "CFG-parallel splits the batch" in checks["odd_batch_cfg"], rank
        assert "already enabled" in checks["enable_twice"], rank
        # per-tensor activation scales span every token: refused in either order, with the scheme that works
        assert "per-tensor activation scales" in checks["split_per_tensor"], rank
        assert "per-token-per-channel" in checks["split_per_tensor"], rank
        assert "runs sequence-parallel" in checks["quantize_when_split"], rank
        # each rank of a CFG-parallel layout holds one branch: a step cache is refused when the layout is set up
        assert "cannot run with CFG-parallel" in checks["cache_with_cfg_parallel"], rank
        assert "cannot run with CFG-parallel" in checks["cfg_parallel_then_cache"], rank
        # radial attention: applied before the split, and a ring needs a kernel with the log-sum-exp
        assert "apply radial attention before enabling sequence parallelism" in checks["split_then_radial"], rank
        assert "choose the radial kernel auto or flex" in checks["radial_ring_without_lse"], rank


@pytest.mark.parametrize("world", sorted(CASES))
def test_all_reduce_sums_over_every_rank(runs, world):
    assert [r["checks"]["all_reduce"] for r in runs(world)] == [world * (world + 1) / 2] * world


def test_a_group_smaller_than_the_world_runs_its_own_layout(runs):
    for rank, results in enumerate(runs(4)):
        assert results["checks"]["pair_ulysses_err"] <= TOLERANCE["fp32"] * 2, rank  # outputs are below 2


@pytest.fixture(scope="module")
def lone_schedules() -> dict[tuple[str, str], dict[str, str]]:
    """(variant, latent) -> the schedule of one process without any process group, for every cached case."""
    out = {}
    for world, name in CACHED_CASES:
        case = CASES[world][name]
        key = (case["variant"], str(case["latent"]))
        if key not in out:
            model, recipe = worker.variant_model(case, "cpu", BuildEnv(torch.device("cpu")))
            out[key] = worker.run(model, recipe, *worker.inputs(case, torch.float32, "cpu"))[1]
    return out


@pytest.mark.parametrize(("world", "name"), CACHED_CASES)
def test_every_rank_takes_the_lone_process_schedule(runs, lone_schedules, world, name):
    case = CASES[world][name]
    want = lone_schedules[(case["variant"], str(case["latent"]))]
    assert set(want) == {"cond", "uncond"}
    for pattern in want.values():  # the run exercises both outcomes (first and last steps always compute)
        assert len(pattern) == worker.SAMPLE_STEPS and "S" in pattern and pattern.count("C") > 2, want
    for rank, results in enumerate(runs(world)):
        assert results[name]["schedules"] == dict.fromkeys(("ref", "overlap", "plain", "restored"), want), rank


@pytest.mark.parametrize("world", sorted(CASES))
def test_built_engines_take_rank_0s_decisions(runs, world, tmp_path):
    """build_engine gives the accelerations the process group: ranks holding replicas of different seeds (which
    alone would skip different steps) all take rank 0's schedule, and the collectives stay matched."""
    alone = []
    x, ctx = worker.inputs({"latent": worker.LATENT_45}, torch.float32, "cpu")
    for seed in range(world):
        engine = WanEngine.build(worker.file_recipe(worker.tiny_weights(tmp_path, seed)), "cpu")
        report = engine.sample(worker.sample_request(x, ctx)).step_cache
        alone.append({b.name: b.pattern for b in report.branches})
    assert len({str(s) for s in alone}) > 1  # otherwise sharing the decisions would be untested
    for rank, results in enumerate(runs(world)):
        assert results["built"]["schedule"] == alone[0], rank
        assert "Quantize Linear (fp8, per-tensor) on" in results["built"]["per_tensor"], rank
        assert "use granularity 'per-token-per-channel'" in results["built"]["per_tensor"], rank
