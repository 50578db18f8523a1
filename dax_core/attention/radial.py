"""Radial attention on one model instance: the paper's schedule (dense first steps, dense first layers) over the
block-sparse kernels, with the masks cached per video grid.

The first ``dense_steps`` steps of a sampling run and the first ``dense_layers`` layers of every forward run the
model's own dense kernel (the attention backend); every other layer attends through the Radial block table of the
video's grid. The choice is made per layer before the blocks run, so a compiled block sees one of two kernels: one
graph for the dense path and one for the sparse path, reused at every step (a new video size compiles once more, as
it would anyway). Each step's computed density is recorded for the run's report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .block_sparse import BoundBlockSparse
from .block_sparse_attention import BlockSparseSelfAttention
from .radial_mask import Grid, radial_block_table
from .registry import AttentionFn
from .schedule import DensityReport, SelfAttentionSchedule

log = logging.getLogger(__name__)

MASK_CACHE_SIZE = 2
"""Video grids whose masks are kept (a workflow alternating two sizes rebuilds none)."""


class RadialAttention(SelfAttentionSchedule):
    """The Radial schedule and mask cache of one model instance (``WanModel.self_attention_schedule``)."""

    name = "radial attention"

    def __init__(
        self,
        dense_steps: int,
        dense_layers: int,
        decay_factor: float,
        block: int,
        kernel: BoundBlockSparse,
        ring_kernel: BoundBlockSparse | None,
        device,
        chosen_by_auto: bool = False,
    ) -> None:
        self.dense_steps = dense_steps
        self.dense_layers = dense_layers
        self.decay_factor = decay_factor
        self.block = block
        self.token_alignment = block
        self.kernel = kernel
        self.ring_kernel = ring_kernel
        self.device = device
        self.chosen_by_auto = chosen_by_auto
        """With auto, a video too small for the kernel (SpargeAttn: 128 tokens) runs the ring kernel instead."""
        self._masks: dict[Grid, BlockSparseSelfAttention] = {}
        self._step: int | None = None
        self._first_step = 0
        self._densities: list[list[float]] | None = None

    def attention_for(self, grid: Grid) -> BlockSparseSelfAttention:
        """The block-sparse self-attention of a video of ``grid``: its mask is built on first use, then cached."""
        grid = tuple(int(n) for n in grid)
        if grid in self._masks:
            self._masks[grid] = self._masks.pop(grid)  # most recently used last
            return self._masks[grid]
        table = radial_block_table(grid, self.decay_factor, self.block, self.device)
        kernel = self.kernel
        ring = self.ring_kernel
        if table.tokens < kernel.min_tokens and self.chosen_by_auto and ring is not None:
            if table.tokens >= ring.min_tokens:
                log.info("radial attention (auto): %d video tokens, fewer than %s takes: %s runs this video",
                         table.tokens, kernel.kernel, ring.kernel)  # fmt: skip
                kernel = ring
        attention = BlockSparseSelfAttention(table, kernel, ring)
        while len(self._masks) >= MASK_CACHE_SIZE:
            self._masks.pop(next(iter(self._masks)))
        self._masks[grid] = attention
        log.info("radial mask for %s frames x %s x %s patches: %d blocks of %d tokens, %.1f%% of dense attention",
                 *grid, table.blocks, self.block, 100 * table.density)  # fmt: skip
        return attention

    def layer_kernels(self, grid: Grid, num_layers: int, dense: AttentionFn) -> Sequence[AttentionFn]:
        if self._step is not None and self._first_step + self._step < self.dense_steps:
            kernels: list[AttentionFn] = [dense] * num_layers
            density = 1.0
        else:
            sparse = self.attention_for(grid)
            first = min(self.dense_layers, num_layers)
            kernels = [dense] * first + [sparse] * (num_layers - first)
            density = (first + (num_layers - first) * sparse.density) / num_layers
        if self._densities is not None and self._step is not None:
            self._densities.extend([] for _ in range(self._step + 1 - len(self._densities)))
            self._densities[self._step].append(density)
        return kernels

    def ring_chunks(self) -> dict[str, int]:
        """Ring chunks attended and skipped as empty so far, over the cached videos (counted outside compile)."""
        return {key: sum(a.chunks[key] for a in self._masks.values()) for key in ("computed", "skipped")}

    def check_ring(self) -> None:
        if self.ring_kernel is None:
            raise ValueError(
                f"radial attention's {self.kernel.kernel} returns no log-sum-exp, which ring attention merges its "
                "chunks with: choose the radial kernel auto or flex, or split the video with Ulysses only"
            )

    def start_run(self, total_steps: int, first_step: int = 0) -> None:
        self._densities = [[] for _ in range(total_steps)]
        self._step = None
        self._first_step = first_step
        if self.dense_steps >= first_step + total_steps:
            log.warning(
                "radial attention keeps all %d steps dense (dense steps %d): nothing runs sparse; lower the dense "
                "steps (published: 12 of 50 steps, 1 of a 4-step distilled run)", total_steps, self.dense_steps,
            )  # fmt: skip

    def start_step(self, index: int) -> None:
        self._step = index

    def end_run(self) -> DensityReport:
        steps = self._densities or []
        report = DensityReport(self.name, tuple(sum(d) / len(d) if d else None for d in steps))
        self._densities, self._step, self._first_step = None, None, 0
        return report
