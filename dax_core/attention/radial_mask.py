"""The Radial attention mask of a Wan video (Li et al., "Radial Attention: O(n log n) Sparse Attention with Energy
Decay for Long Video Generation", arXiv 2506.19852), token by token and as a block table.

Tokens are the video's patches in Wan's order: frame-major, then row-major within a frame (``s = height * width``
tokens per frame). A query at frame i, position k attends to a key at frame j, position l when

* j = 0: every token attends to the whole first frame (the paper's attention sink), or
* the frame pair is kept and |k - l| <= W(d), with d = |i - j|.

Temporal distance d falls in band g = bit_length(d) (0 for d = 0; d in [2^(g-1), 2^g) otherwise). The band's
diagonal width before decay is L(d) = 2^bit_length(s) / 2^g: the frame width rounded up to a power of two,
halved per band, so each band computes half the previous one and the whole map O(n log n). Then

* W(d) = s (the whole frame) for d <= 1, else max(decay_factor * L(d), block);
* a frame pair is kept when L(d) >= block, else only every floor(block / L(d))-th distance: where the width would
  drop below a block, fewer diagonals are computed instead of narrower ones.

This is the rule of the authors' code for Wan (mit-han-lab/radial-attention, ``radial_attn/attn_mask.py``:
``get_window_width`` with ``model_type="wan"``, ``get_diagonal_split_mask``, the sink in
``gen_log_mask_shrinked``), with the block size as both the window floor and the threshold of the frame split (their
code hard-codes 128 for the latter and uses block 128 for Wan2.1, so the two agree there).

Block alignment differs from theirs on purpose: a block is computed when any of its (query, key) pairs is in the
mask, so every pair the definition keeps is attended at every video size; their code keeps a block by a density
vote per frame pair and assumes frames that fill whole blocks (768x1280: 3840 tokens per frame). Computed blocks
are full either way: a kernel gains only from blocks it skips.
"""

from __future__ import annotations

import math

import torch

from .block_table import BlockTable

Grid = tuple[int, int, int]
"""(frames, height, width) of the video in patches."""


def _distance_rules(
    frames: int, tokens_per_frame: int, decay_factor: float, block: int
) -> tuple[list[bool], list[float]]:
    """(kept, window) per temporal distance d = 0 .. frames - 1 (the sink, frame 0, is handled apart)."""
    width = 2 ** tokens_per_frame.bit_length()  # the frame's tokens rounded up past a power of two
    kept, window = [], []
    for d in range(frames):
        band_width = width / 2 ** d.bit_length()  # L(d): halves per band
        kept.append(band_width >= block or d % math.floor(block / band_width) == 0)
        window.append(float(tokens_per_frame) if d <= 1 else max(decay_factor * band_width, float(block)))
    return kept, window


def _check(grid: Grid, decay_factor: float, block: int) -> None:
    if len(grid) != 3 or any(not isinstance(n, int) or n < 1 for n in grid):
        raise ValueError(f"a video grid is (frames, height, width) in patches, all positive; got {grid}")
    if not decay_factor > 0:
        raise ValueError(
            f"the decay factor scales the window of distant frames and must be positive, got {decay_factor}"
        )
    if block < 1:
        raise ValueError(f"the block size must be a positive number of tokens, got {block}")


def radial_token_mask(
    grid: Grid,
    decay_factor: float,
    block: int,
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """bool [len(rows), len(cols)]: whether each query token (``rows``, default all) attends to each key token
    (``cols``, default all). For references: a whole mask is tokens^2 booleans."""
    _check(grid, decay_factor, block)
    frames, height, width = grid
    s = height * width
    rows = torch.arange(frames * s) if rows is None else rows
    cols = torch.arange(frames * s) if cols is None else cols
    kept, window = (torch.tensor(x) for x in _distance_rules(frames, s, decay_factor, block))
    fi, ki = (rows // s)[:, None], (rows % s)[:, None]
    fj, kj = (cols // s)[None, :], (cols % s)[None, :]
    d = (fi - fj).abs()
    return (fj == 0) | (kept[d] & ((ki - kj).abs() <= window[d]))


def _segments(tokens: int, s: int, block: int) -> tuple[torch.Tensor, ...]:
    """The token range cut at every block and every frame boundary: (block, frame, first and last position in the
    frame) of each piece. Each piece lies in one block and one frame."""
    cuts = torch.cat((torch.arange(0, tokens, block), torch.arange(0, tokens, s), torch.tensor([tokens])))
    cuts = torch.unique(cuts)  # sorted
    start, end = cuts[:-1], cuts[1:] - 1
    return start // block, start // s, start % s, end % s


def radial_block_table(grid: Grid, decay_factor: float, block: int, device: torch.device | str = "cpu") -> BlockTable:
    """The Radial mask of a video at block granularity: a block is computed when any of its pairs is in the mask.

    Computed piecewise: within one block and one frame, the positions a piece holds form an interval, and two
    intervals hold a pair within distance W exactly when the gap between them is at most W. So the table needs
    (blocks + frames)^2 comparisons, not tokens^2."""
    _check(grid, decay_factor, block)
    frames, height, width = grid
    s = height * width
    tokens = frames * s
    kept, window = (torch.tensor(x) for x in _distance_rules(frames, s, decay_factor, block))
    q_block, q_frame, q_lo, q_hi = _segments(tokens, s, block)
    k_block, k_frame, k_lo, k_hi = _segments(tokens, s, block)
    d = (q_frame[:, None] - k_frame[None, :]).abs()
    gap = torch.maximum(k_lo[None, :] - q_hi[:, None], q_lo[:, None] - k_hi[None, :]).clamp(min=0)
    hit = (k_frame == 0)[None, :] | (kept[d] & (gap <= window[d]))
    blocks = math.ceil(tokens / block)
    counts = torch.zeros(blocks, blocks, dtype=torch.int32)
    rows, cols = torch.broadcast_tensors(q_block[:, None], k_block[None, :])
    counts.index_put_((rows, cols), hit.to(torch.int32), accumulate=True)
    return BlockTable.of(counts > 0, tokens, block, device)
