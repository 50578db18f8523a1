"""The step-cache interface: what the model and the sampling loop ask of a cache that skips denoising work.

A step cache sits between ``WanModel.prepare`` and ``WanModel.run_blocks``. The engine brackets every
sampling run with ``start_run`` / ``end_run`` and announces each step with ``start_step``; the model hands
the cache its prepared inputs and the stream (branch) of every batch row, and the cache returns the
block-stack output, computed or reused. TeaCache implements it; other caches (MagCache, EasyCache) fit
behind the same four calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..models.wan import Prepared, WanModel

COMPUTED = "C"
SKIPPED = "S"


@dataclass(frozen=True)
class BranchReport:
    """What one stream (e.g. the conditional CFG branch) did over a run: one letter per step it was evaluated."""

    name: str
    pattern: str  # "C" computed, "S" skipped (block stack reused), in step order

    @property
    def computed(self) -> int:
        return self.pattern.count(COMPUTED)

    @property
    def skipped(self) -> int:
        return self.pattern.count(SKIPPED)

    @property
    def evaluated(self) -> int:
        return len(self.pattern)


@dataclass(frozen=True)
class StepCacheReport:
    """Skip counts of one sampling run, per branch."""

    cache: str  # e.g. "TeaCache"
    steps: int
    branches: tuple[BranchReport, ...]

    @property
    def implied_speedup(self) -> float:
        """Branch-steps evaluated over branch-steps whose block stack ran: the speedup if a skipped step were free."""
        evaluated = sum(b.evaluated for b in self.branches)
        computed = sum(b.computed for b in self.branches)
        return evaluated / computed if computed else 1.0

    def branch(self, name: str) -> BranchReport:
        for b in self.branches:
            if b.name == name:
                return b
        raise KeyError(f"no branch {name!r} in this run; branches: {[b.name for b in self.branches]}")

    def summary(self) -> str:
        if not self.branches:
            return f"{self.cache}: no step evaluated"
        parts = ", ".join(f"{b.name} {b.skipped}/{b.evaluated}" for b in self.branches)
        return f"{self.cache} skipped {parts} steps (~{self.implied_speedup:.2f}x fewer transformer passes)"


class StepCache(ABC):
    """Skips the transformer block stack on steps where its output can be reused. State lives per sampling run."""

    name: str = "step cache"

    @abstractmethod
    def start_run(self, total_steps: int) -> None:
        """Forget everything from earlier runs; the coming run has ``total_steps`` steps."""

    @abstractmethod
    def start_step(self, index: int) -> None:
        """The next model calls belong to step ``index`` (0-based, increasing) of the current run."""

    @abstractmethod
    def run_blocks(self, model: WanModel, p: Prepared, branches: Sequence[str]) -> torch.Tensor:
        """The block-stack output for ``p`` ([B, S, D]); ``branches[i]`` names the stream of batch row i."""

    @abstractmethod
    def end_run(self) -> StepCacheReport:
        """Release the cached tensors and report what the run skipped."""

    def skipped_so_far(self) -> tuple[tuple[str, int], ...]:
        """(branch, steps skipped) of the current run up to now, for progress reports; none by default."""
        return ()
