"""A block-sparse attention mask: which (query block, key block) tiles of one video's self-attention are computed.

``BlockTable`` holds a boolean table [query blocks, key blocks] over ``tokens`` real tokens cut into square blocks
of ``block`` tokens (the last block of each side may be shorter). A computed block is computed whole: every query
of it attends to every key of it, so the table is the mask, at block granularity.

Kernels see windows of the table: the whole sequence on one device or under Ulysses (where the queries may carry
padding after the real tokens), or one query slice against one key slice under ring attention. Windows start on
block boundaries; query rows past the real tokens (padding) attend to the first key block only, so no row of a
kernel's input is empty on the whole sequence and padded rows cost one block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class BlockTable:
    """Computed tiles of a [tokens, tokens] attention map, ``block`` x ``block`` tokens each."""

    table: torch.Tensor = field(repr=False)
    """bool [ceil(tokens / block), ceil(tokens / block)] on the device the kernels run on."""
    tokens: int
    block: int
    host: torch.Tensor = field(repr=False, compare=False)
    """The same table on the CPU: emptiness checks need no device round trip."""

    @classmethod
    def of(cls, table: torch.Tensor, tokens: int, block: int, device: torch.device | str) -> BlockTable:
        blocks = math.ceil(tokens / block)
        if table.dtype != torch.bool or tuple(table.shape) != (blocks, blocks):
            raise ValueError(
                f"a block table for {tokens} tokens in blocks of {block} is bool [{blocks}, {blocks}], "
                f"got {table.dtype} {tuple(table.shape)}"
            )
        host = table.cpu()
        return cls(host.to(device), tokens, block, host)

    @property
    def blocks(self) -> int:
        return self.table.shape[0]

    def _sizes(self) -> torch.Tensor:
        """Real tokens in each block (the last may be short), int64 on the CPU."""
        sizes = torch.full((self.blocks,), self.block, dtype=torch.int64)
        sizes[-1] = self.tokens - (self.blocks - 1) * self.block
        return sizes

    @property
    def density(self) -> float:
        """Computed (query, key) pairs over all pairs: 1.0 is dense attention."""
        sizes = self._sizes()
        computed = (self.host.to(torch.int64) * sizes[:, None] * sizes[None, :]).sum().item()
        return computed / self.tokens**2

    def _check_window(self, q_start: int, q_len: int, k_start: int, k_len: int) -> None:
        if q_start % self.block or k_start % self.block:
            raise ValueError(
                f"a window of the block table starts on block boundaries (multiples of {self.block} tokens); got "
                f"queries from {q_start}, keys from {k_start}: split the tokens into slices of whole blocks"
            )
        if k_start + k_len > self.tokens or q_len < 1 or k_len < 1 or q_start < 0 or k_start < 0:
            raise ValueError(
                f"window of {q_len} queries from {q_start} and {k_len} keys from {k_start} does not fit a video of "
                f"{self.tokens} tokens (padding keys are dropped before attention)"
            )

    def window(self, q_start: int, q_len: int, k_start: int, k_len: int) -> torch.Tensor:
        """bool [ceil(q_len / block), ceil(k_len / block)]: the tiles of queries [q_start, q_start + q_len) against
        keys [k_start, k_start + k_len). Query blocks past the real tokens attend to key block 0 only."""
        self._check_window(q_start, q_len, k_start, k_len)
        return self._window(self.table, q_start, q_len, k_start, k_len)

    def is_empty(self, q_start: int, q_len: int, k_start: int, k_len: int) -> bool:
        """Whether that window computes no tile at all (read from the host copy: no device synchronisation)."""
        self._check_window(q_start, q_len, k_start, k_len)
        return not bool(self._window(self.host, q_start, q_len, k_start, k_len).any())

    def _window(self, table: torch.Tensor, q_start: int, q_len: int, k_start: int, k_len: int) -> torch.Tensor:
        q0, nq = q_start // self.block, math.ceil(q_len / self.block)
        k0, nk = k_start // self.block, math.ceil(k_len / self.block)
        rows = table[q0 : q0 + nq]
        missing = nq - rows.shape[0]
        if missing > 0:  # padded queries: the first key block only
            pad = torch.zeros(missing, self.blocks, dtype=torch.bool, device=table.device)
            pad[:, 0] = True
            rows = torch.cat((rows, pad))
        return rows[:, k0 : k0 + nk]

    def token_mask(self) -> torch.Tensor:
        """bool [tokens, tokens]: the pairs the table computes (for references on small videos)."""
        b = self.block
        return self.host.repeat_interleave(b, 0).repeat_interleave(b, 1)[: self.tokens, : self.tokens]
