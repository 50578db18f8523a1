"""Sequence parallelism with the image tokens: 2 gloo ranks (Ulysses, ring, CFG-parallel) and 4 (Ulysses x ring,
CFG-parallel x Ulysses) equal one process on the
I2V and FLF2V tiny models (and a Wan2.2 I2V A14B one, image latent without CLIP), forward by forward and through a
short CFG sampling run with image conditioning.

Tolerance as in test_sequence_parallel (float32: the split only reorders float32 sums, 1e-5 of the output's scale
leaves 10x room); the image cross-attention itself is computed whole on every rank (its keys are the image tokens,
which every rank holds), so a rank that lost its image features or took the other branch's is off by O(1)."""

from __future__ import annotations

import pytest

from tests.unit import image_parallel_worker as worker
from tests.unit.parallel_worker import launch

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    try:
        return launch(2, worker.CASES, tmp_path_factory.mktemp("image-world2"), script=worker.__file__)
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def ranks4(tmp_path_factory):
    try:
        return launch(4, worker.CASES4, tmp_path_factory.mktemp("image-world4"), script=worker.__file__)
    except RuntimeError as e:
        pytest.fail(str(e))


def _check(ranks: list[dict], case: str) -> None:
    for rank, results in enumerate(ranks):
        got = results[case]
        assert got["ref_forward_max"] > 0.1, "a degenerate reference"
        for key in ("forward_overlap", "forward_plain", "sampled_overlap", "sampled_plain"):
            assert got[key] < TOLERANCE, (rank, case, key, got[key])


@pytest.mark.parametrize("case", sorted(worker.CASES))
def test_two_ranks_equal_one_process_with_image_tokens(ranks, case):
    _check(ranks, case)


@pytest.mark.parametrize("case", sorted(worker.CASES4))
def test_four_ranks_equal_one_process_with_image_tokens(ranks4, case):
    _check(ranks4, case)
