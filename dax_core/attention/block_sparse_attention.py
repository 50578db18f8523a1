"""Self-attention of one video under a block table, behind the attention registry's signature (q, k, v) -> out.

``BlockSparseSelfAttention`` is what a model layer calls in place of a dense kernel: on one device and under
Ulysses it attends the whole sequence (queries may carry padding after the real tokens); under ring attention,
``chunk_with_lse`` attends one query slice to one key slice with the window of the table that covers them, and
returns None for a window with no computed block, so ring attention skips that chunk without running any kernel
(eager mode only: inside torch.compile the kernel runs the empty window, which computes no tile).
"""

from __future__ import annotations

import torch

from .block_sparse import BoundBlockSparse
from .block_table import BlockTable


class BlockSparseSelfAttention:
    """One video's block table and the kernels that compute it."""

    def __init__(self, table: BlockTable, kernel: BoundBlockSparse, ring_kernel: BoundBlockSparse | None) -> None:
        kernel.check_tokens(table.tokens)
        self.table = table
        self.kernel = kernel
        self.ring_kernel = ring_kernel
        """The kernel of ring attention's chunks (it returns the log-sum-exp), or None where the layout has no ring."""
        self.chunks = {"computed": 0, "skipped": 0}
        """Ring chunks attended and skipped as empty, counted outside torch.compile."""

    @property
    def density(self) -> float:
        return self.table.density

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        window = self.table.window(0, q.shape[1], 0, k.shape[1])
        return self.kernel.run(q, k, v, window, self.table.block, None)

    def chunk_with_lse(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int, k_start: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(out, lse) of the queries from token ``q_start`` over the keys from token ``k_start``; None when the
        table computes no block of that window."""
        if self.ring_kernel is None or self.ring_kernel.run_lse is None:
            raise RuntimeError(f"{self.kernel.kernel} has no ring kernel: enable ring attention before sampling")
        if not torch.compiler.is_compiling():
            empty = self.table.is_empty(q_start, q.shape[1], k_start, k.shape[1])
            self.chunks["skipped" if empty else "computed"] += 1
            if empty:
                return None
        window = self.table.window(q_start, q.shape[1], k_start, k.shape[1])
        return self.ring_kernel.run_lse(q, k, v, window, self.table.block, None)
