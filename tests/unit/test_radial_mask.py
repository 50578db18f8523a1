"""The Radial mask against its definition, token by token and block by block, and the block table's windows.

The definition (arXiv 2506.19852 and the authors' Wan code, restated in dax_core/attention/radial_mask.py) is
written out here once more, pair by pair in plain Python, as the oracle. Grids have odd frame counts and frames that
do not fill whole blocks; the block sizes make the bands, the dropped frame pairs and the sink all appear.
"""

from __future__ import annotations

import functools
import math
import random

import pytest
import torch

from dax_core.attention.block_table import BlockTable
from dax_core.attention.radial_mask import radial_block_table, radial_token_mask

# (grid, decay_factor, block): 12, 48, 20, 35 and 9 tokens per frame, blocks of 4, 8 or 16 tokens
CASES = [((5, 3, 4), 0.2, 8), ((10, 6, 8), 0.2, 8), ((7, 4, 5), 1.0, 16), ((9, 5, 7), 0.5, 16), ((1, 3, 3), 0.2, 4)]


def allowed(i: int, k: int, j: int, m: int, s: int, decay: float, block: int) -> bool:
    """Does the query at frame i, position k attend to the key at frame j, position m (s positions per frame)?"""
    if j == 0:  # the attention sink: the whole first frame
        return True
    d = abs(i - j)
    band = 0 if d == 0 else math.floor(math.log2(d)) + 1
    width = 2 ** (math.floor(math.log2(s)) + 1) / 2**band  # s rounded up past a power of two, halved per band
    if width < block and d % math.floor(block / width) != 0:  # fewer diagonals instead of narrower ones
        return False
    window = s if d <= 1 else max(decay * width, block)
    return abs(k - m) <= window


@functools.cache
def oracle_mask(grid, decay: float, block: int) -> torch.Tensor:
    f, h, w = grid
    s = h * w
    n = f * s
    mask = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for key in range(n):
            mask[q, key] = allowed(q // s, q % s, key // s, key % s, s, decay, block)
    return mask


def cover(mask: torch.Tensor, block: int) -> torch.Tensor:
    """A block is computed when any of its pairs is: pad to whole blocks and reduce."""
    n = mask.shape[0]
    blocks = -(-n // block)
    padded = torch.zeros(blocks * block, blocks * block, dtype=torch.bool)
    padded[:n, :n] = mask
    return padded.view(blocks, block, blocks, block).any(dim=3).any(dim=1)


@pytest.mark.parametrize(("grid", "decay", "block"), CASES)
def test_token_mask_is_the_definition(grid, decay, block):
    assert torch.equal(radial_token_mask(grid, decay, block), oracle_mask(grid, decay, block))


@pytest.mark.parametrize(("grid", "decay", "block"), CASES)
def test_block_table_covers_exactly_the_blocks_holding_a_pair_of_the_mask(grid, decay, block):
    mask = oracle_mask(grid, decay, block)
    table = radial_block_table(grid, decay, block)
    assert torch.equal(table.host, cover(mask, block))
    computed = table.token_mask()
    assert not (mask & ~computed).any(), "every pair of the definition is computed"
    assert table.density == pytest.approx(computed.double().mean().item(), abs=1e-12)


def test_the_cases_exercise_bands_dropped_frame_pairs_and_partial_blocks():
    """Guard on the cases above: they must hold every feature of the definition, or the tests prove little."""
    s = 12  # (5, 3, 4): the width 16 / 2^band drops below the block of 8 from distance 2 on
    mask = oracle_mask((5, 3, 4), 0.2, 8)
    band = mask[4 * s :, 2 * s : 3 * s]  # distance 2: kept, positions within max(0.2 * 4, 8) = 8
    assert band.any() and not band.all()
    assert not mask[4 * s :, 1 * s : 2 * s].any()  # distance 3: only every 2nd distance keeps a diagonal
    assert mask[4 * s :, :s].all()  # the sink
    s = 48  # (10, 6, 8): bands of +-8 tokens in frames of 48, every second distance from 8 on
    mask = oracle_mask((10, 6, 8), 0.2, 8)
    far = mask[9 * s :, 7 * s : 8 * s]
    assert far.any() and not far.all()
    assert mask[9 * s :, 1 * s : 2 * s].any()
    for grid, block in (((5, 3, 4), 8), ((7, 4, 5), 16), ((9, 5, 7), 16)):
        assert (grid[1] * grid[2]) % block, "frames that do not fill whole blocks"
        assert 0.1 < radial_block_table(grid, 0.2, block).density < 0.95, grid


def test_published_wan_720p_windows():
    """At Wan2.1's 1280x720x81 grid (21 frames of 45x80 patches, 3600 tokens): frames 2-3 apart see +-204 tokens
    (0.2 x 4096/4), farther ones +-128 (one block); every frame pair is kept. At 832x480 (1560 tokens per frame)
    distances 16-20 keep only every second frame."""
    grid, s = (21, 45, 80), 3600

    def pair(i, k, j, m, grid=grid, s=s):
        rows, cols = torch.tensor([i * s + k]), torch.tensor([j * s + m])
        return bool(radial_token_mask(grid, 0.2, 128, rows, cols))

    assert pair(5, 1000, 3, 1204) and not pair(5, 1000, 3, 1205)
    assert pair(9, 1000, 5, 1128) and not pair(9, 1000, 5, 1129)
    assert pair(20, 0, 0, 3599) and pair(20, 3599, 19, 0)
    assert all(pair(20, 100, 20 - d, 100) for d in range(21))
    small = (21, 30, 52)
    assert pair(20, 0, 4, 0, grid=small, s=1560) and not pair(20, 0, 3, 0, grid=small, s=1560)


@pytest.mark.parametrize("grid", [(21, 45, 80), (21, 30, 52)], ids=["14b-720p", "1.3b-480p"])
def test_real_grids_block_table_matches_the_definition_on_sampled_blocks(grid):
    """The piecewise table at full size, checked block by block against the token mask of that block: the blocks at
    every frame boundary of the first rows, the last (partial) blocks, and random ones."""
    block = 128
    table = radial_block_table(grid, 0.2, block)
    n = grid[0] * grid[1] * grid[2]
    s = grid[1] * grid[2]
    nb = table.blocks
    boundary = sorted({(f * s) // block for f in range(grid[0])})
    rng = random.Random(0)
    picks = [(0, c) for c in boundary] + [(r, 0) for r in boundary[:5]] + [(nb - 1, nb - 1), (nb - 1, 0)]
    picks += [(rng.randrange(nb), rng.randrange(nb)) for _ in range(40)]
    for r, c in picks:
        rows = torch.arange(r * block, min((r + 1) * block, n))
        cols = torch.arange(c * block, min((c + 1) * block, n))
        assert bool(table.host[r, c]) == bool(radial_token_mask(grid, 0.2, block, rows, cols).any()), (r, c)


def test_window_slices_the_table_and_pads_queries_with_the_first_key_block():
    grid, block = (10, 6, 8), 8
    table = radial_block_table(grid, 0.2, block)
    n = table.tokens
    assert torch.equal(table.window(0, n, 0, n), table.table)
    assert torch.equal(table.window(16, 20, 8, 33), table.table[2:5, 1:6])
    padded = table.window(n - 8, 8 + 3 * block, 0, n)  # the last real block, then three blocks of padding
    assert torch.equal(padded[0], table.table[-1])
    assert padded[1:, 0].all() and not padded[1:, 1:].any()
    assert torch.equal(table.window(n + 8, 16, 16, 24), torch.zeros(2, 3, dtype=torch.bool))
    assert not table.is_empty(0, n, 0, n)
    custom = torch.zeros(3, 3, dtype=torch.bool)
    custom[0, 0] = custom[1, :2] = custom[2, 2] = True
    small = BlockTable.of(custom, tokens=20, block=8, device="cpu")
    assert small.is_empty(0, 8, 8, 12) and small.is_empty(16, 4, 0, 16)
    assert not small.is_empty(8, 8, 8, 12) and not small.is_empty(0, 24, 16, 4)
    assert small.density == pytest.approx((64 + 128 + 16) / 400)
    with pytest.raises(ValueError, match="block boundaries"):
        table.window(4, 8, 0, n)
    with pytest.raises(ValueError, match="does not fit"):
        table.window(0, 8, 0, n + 1)


def test_block_table_refuses_a_table_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"bool \[2, 2\]"):
        BlockTable.of(torch.ones(3, 3, dtype=torch.bool), tokens=10, block=8, device="cpu")


@pytest.mark.parametrize(
    ("args", "match"),
    [(((0, 3, 4), 0.2, 8), "positive"), (((2, 3, 4), 0.0, 8), "decay factor"), (((2, 3, 4), 0.2, 0), "block size")],
)
def test_bad_mask_arguments_say_what_is_wrong(args, match):
    with pytest.raises(ValueError, match=match):
        radial_block_table(*args)
