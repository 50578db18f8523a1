"""TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model") for Wan2.1.

Per branch and step: the relative L1 change of the timestep-modulated input since the branch's previous
step, ``sum|x - x_prev| / sum|x_prev|``, is mapped through the model's polynomial and accumulated. While the
sum stays under the threshold the block stack is skipped and the branch's cached residual reused; when it
reaches the threshold the stack runs and the sum restarts from zero. Which input is measured (``e`` or
``e0``) and the published polynomials are in ``coefficients.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from .coefficients import MODES, RETENTION_STEPS, rescale
from .collective import reduce_sums
from .residual import ResidualStepCache, RowIndex, SkipWindow

if TYPE_CHECKING:
    from ..models.wan import Prepared

log = logging.getLogger(__name__)


@dataclass
class _Track:
    previous: torch.Tensor | None = None
    accumulated: float = 0.0
    distance: float = math.nan  # the last relative L1 change measured (for logs and tests)


class TeaCachePolicy:
    """TeaCache's decision rule for any number of named branches, each with its own state.

    ``decide`` takes each branch's modulated input for this step. With a process ``group`` the L1 sums of
    all undecided branches are reduced over the group in one all-reduce, so every rank takes the same
    decisions; ``sharded`` says whether each rank holds a shard of the tokens of the input (summed over the
    group) or the whole, replicated input (rank 0's sums are taken).
    """

    def __init__(
        self,
        coefficients: Sequence[float],
        threshold: float,
        group: dist.ProcessGroup | None = None,
        sharded: bool = False,
    ) -> None:
        if not coefficients or not all(math.isfinite(c) for c in coefficients):
            raise ValueError(f"TeaCache needs finite polynomial coefficients, got {list(coefficients)}")
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"TeaCache threshold must be a finite number >= 0 (0: never skip), got {threshold}")
        self.coefficients = tuple(float(c) for c in coefficients)
        self.threshold = float(threshold)
        self.group = group
        self.sharded = sharded
        self._tracks: dict[str, _Track] = {}

    def reset(self) -> None:
        self._tracks = {}

    def track(self, name: str) -> _Track:
        return self._tracks.setdefault(name, _Track())

    def decide(self, inputs: Mapping[str, torch.Tensor], forced: Mapping[str, bool]) -> dict[str, bool]:
        """True for each branch whose block stack must run this step; updates every branch's state."""
        pending = [n for n in inputs if not forced[n] and self.track(n).previous is not None]
        sums: dict[str, tuple[float, float]] = {}
        if pending:
            local = torch.stack([self._local_sums(self.track(n).previous, inputs[n]) for n in pending])
            sums = dict(zip(pending, map(tuple, reduce_sums(local, self.group, self.sharded).tolist()), strict=True))
        decisions: dict[str, bool] = {}
        for name, current in inputs.items():
            t = self.track(name)
            if name in sums:
                numerator, denominator = sums[name]
                t.distance = numerator / denominator if denominator > 0 else math.inf
                t.accumulated += rescale(self.coefficients, t.distance) if math.isfinite(t.distance) else math.inf
                compute = not (self.threshold > 0 and t.accumulated < self.threshold)
            else:
                t.distance = math.nan
                compute = True
            if compute:
                t.accumulated = 0.0
            t.previous = current
            decisions[name] = compute
        return decisions

    @staticmethod
    def _local_sums(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        if previous.shape != current.shape:
            raise ValueError(
                f"TeaCache input changed shape within a run ({tuple(previous.shape)} -> {tuple(current.shape)})"
            )
        prev = previous.to(torch.float64)
        return torch.stack(((current.to(torch.float64) - prev).abs().sum(), prev.abs().sum()))


class TeaCache(ResidualStepCache):
    """TeaCache on Wan2.1's block stack: one policy state and one residual per branch (CFG stream)."""

    name = "TeaCache"

    def __init__(
        self,
        coefficients: Sequence[float],
        threshold: float,
        mode: str = "e0",
        start: float = 0.0,
        end: float = 1.0,
        max_consecutive_skips: int = 0,
        cache_device: torch.device | str | None = None,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        """``mode``: "e0" measures the time projection and always computes the first 5 steps; "e" measures the
        time embedding and always computes the first step. The last step is always computed. ``group``: the
        sequence-parallel process group, if the tokens are split over ranks."""
        if mode not in MODES:
            raise ValueError(f"TeaCache mode {mode!r} is not one of {', '.join(MODES)}")
        super().__init__(SkipWindow(RETENTION_STEPS[mode], start, end, max_consecutive_skips), cache_device)
        self.mode = mode
        # e and e0 depend on the timestep only: every rank of a sequence-parallel group holds all of them.
        self.policy = TeaCachePolicy(coefficients, threshold, group=group, sharded=False)

    def reset_policy(self) -> None:
        self.policy.reset()

    def decide(self, p: Prepared, groups: Mapping[str, RowIndex], forced: Mapping[str, bool]) -> dict[str, bool]:
        modulated = p.e0 if self.mode == "e0" else p.e
        return self.policy.decide({name: modulated[rows] for name, rows in groups.items()}, forced)
