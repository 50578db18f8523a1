"""Sequence parallelism on CPU with gloo: the parallel forward equals the single-process forward.

Each world size is one launch of N worker processes (tests/unit/parallel_worker.py) that run every case
of that size; the tests below read what each rank measured. Token counts are not multiples of the
number of slices (45 tokens; 5 tokens, where with 4 slices the last rank holds only padding).

Every layout runs plain, and a few also with the blocks compiled (regional torch.compile, fullgraph). To
check another acceleration under parallelism (quantization, a step cache), add it to ``VARIANTS`` in
parallel_worker.py: every layout then also runs with it.
"""

from __future__ import annotations

import pytest

from tests.unit.parallel_worker import CASES, launch

# float32 end to end: the parallel run changes only the order of float32 sums (per-head attention blocks,
# log-sum-exp merges); 1e-5 of the output's scale leaves 10x room over what is measured. A padded key that
# leaked into attention, a wrong slice or a wrong head order moves outputs by 1e-3 and more.
# bfloat16: both runs round every activation to 8 bits of mantissa, in different places; the tolerance
# is a few bf16 steps (2^-8 = 4e-3) of the output's scale.
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}


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
    tol = TOLERANCE[CASES[world][name]["dtype"]]
    for rank, results in enumerate(runs(world)):
        r = results[name]
        scale = max(1.0, r["ref_max"])
        assert r["finite"], (rank, r)
        assert r["err_overlap"] <= tol * scale, (rank, r)
        assert r["err_plain"] <= tol * scale, (rank, r)


@pytest.mark.parametrize(("world", "name"), ALL_CASES)
def test_overlapped_and_plain_schedules_agree(runs, world, name):
    for rank, results in enumerate(runs(world)):
        r = results[name]
        # the same kernels on the same numbers, only cut into units: no rounding may differ by more than
        # the last bit of a float32 sum reordered inside the attention kernel
        assert r["overlap_vs_plain"] <= 1e-6 * max(1.0, r["ref_max"]), (rank, r)


@pytest.mark.parametrize(("world", "name"), ALL_CASES)
def test_disabling_restores_the_single_process_forward(runs, world, name):
    for rank, results in enumerate(runs(world)):
        assert results[name]["restored_vs_ref"] == 0.0, rank


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


@pytest.mark.parametrize("world", sorted(CASES))
def test_all_reduce_sums_over_every_rank(runs, world):
    assert [r["checks"]["all_reduce"] for r in runs(world)] == [world * (world + 1) / 2] * world


def test_a_group_smaller_than_the_world_runs_its_own_layout(runs):
    for rank, results in enumerate(runs(4)):
        assert results["checks"]["pair_ulysses_err"] <= TOLERANCE["fp32"] * 2, rank  # outputs are below 2
