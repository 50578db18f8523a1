"""Residual reuse per branch: the mechanics shared by step caches that skip the whole block stack.

On a computed step a branch stores its residual (block-stack output minus input); on a skipped step its
output is its current input plus that residual. The batch rows are grouped by branch (the engine batches the
conditional and unconditional CFG streams in one forward): when every branch computes, the stack runs once on
the whole batch; when every branch skips, it does not run; when they disagree, it runs on the computing rows
only. What decides is left to a subclass (``decide``); which steps may be skipped at all is a ``SkipWindow``.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .base import COMPUTED, SKIPPED, BranchReport, StepCache, StepCacheReport

if TYPE_CHECKING:
    from ..models.wan import Prepared, WanModel

log = logging.getLogger(__name__)

RowIndex = slice | torch.Tensor
"""Rows of the batch: a slice when they are contiguous (a view, no copy), else a long tensor of row numbers."""


@dataclass(frozen=True)
class SkipWindow:
    """Which steps of an N-step run may be skipped. The last step is always computed.

    ``first_steps``: the first steps always computed (TeaCache's retention steps). ``start`` / ``end``: only
    steps with ``start <= i / N < end`` may be skipped. ``max_consecutive``: after this many skips in a row a
    branch computes again (0: no limit).
    """

    first_steps: int = 1
    start: float = 0.0
    end: float = 1.0
    max_consecutive: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.first_steps, int) or self.first_steps < 1:
            raise ValueError(
                f"first_steps must be an integer >= 1 (the first step has nothing to reuse), got {self.first_steps!r}"
            )
        if not (0.0 <= self.start < self.end <= 1.0):
            raise ValueError(
                f"need 0 <= start < end <= 1 (fractions of the steps), got start={self.start}, end={self.end}"
            )
        if not isinstance(self.max_consecutive, int) or self.max_consecutive < 0:
            raise ValueError(f"max_consecutive must be an integer >= 0 (0: no limit), got {self.max_consecutive!r}")

    def allows(self, step: int, total: int) -> bool:
        if step < self.first_steps or step >= total - 1:
            return False
        # round() keeps 0.1 * 50 at 5, not 5.000000000000001; then step i is in iff ceil(start*N) <= i < ceil(end*N)
        return math.ceil(round(self.start * total, 9)) <= step < math.ceil(round(self.end * total, 9))


@dataclass
class _Branch:
    residual: torch.Tensor | None = None  # on the cache device
    residual_shape: tuple[int, ...] = ()
    last_step: int = -1
    consecutive_skips: int = 0
    pattern: list[str] = field(default_factory=list)


def row_groups(branches: Sequence[str], batch: int) -> dict[str, list[int]]:
    """Batch rows of each branch, in order of first appearance."""
    if len(branches) != batch:
        raise ValueError(f"got {len(branches)} branch names for a batch of {batch}: name one branch per batch row")
    groups: dict[str, list[int]] = {}
    for row, name in enumerate(branches):
        if not isinstance(name, str) or not name:
            raise ValueError(f"branch names must be non-empty strings, got {name!r} for row {row}")
        groups.setdefault(name, []).append(row)
    return groups


def row_index(rows: list[int], device: torch.device) -> RowIndex:
    if rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return torch.tensor(rows, device=device, dtype=torch.long)


class ResidualStepCache(StepCache):
    """Keeps one residual per branch and runs the block stack only for the branches that ``decide`` computes."""

    def __init__(self, window: SkipWindow, cache_device: torch.device | str | None = None) -> None:
        """``cache_device``: where residuals are kept (None: where the model runs; "cpu": pinned host memory)."""
        self.window = window
        self.cache_device = torch.device(cache_device) if cache_device is not None else None
        self._total = 0
        self._step: int | None = None
        self._branches: dict[str, _Branch] = {}

    # -- what a subclass provides -------------------------------------------------------------------------------

    @abstractmethod
    def reset_policy(self) -> None:
        """Forget the decision state of every branch (called at the start of each run)."""

    @abstractmethod
    def decide(self, p: Prepared, groups: Mapping[str, RowIndex], forced: Mapping[str, bool]) -> dict[str, bool]:
        """Per branch of this call: True to run the block stack, False to reuse the residual.

        ``forced[name]`` is True where the branch must compute (outside the skip window, after too many skips in
        a row, nothing cached yet); the answer must then be True, and the policy still updates its state.
        """

    # -- StepCache ----------------------------------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return self._total

    @property
    def step(self) -> int | None:
        return self._step

    def cached_residual(self, branch: str) -> torch.Tensor | None:
        """The residual ``branch`` would reuse now (on the cache device), None before its first computed step."""
        b = self._branches.get(branch)
        return None if b is None else b.residual

    def start_run(self, total_steps: int) -> None:
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"a run needs at least one step, got {total_steps!r}")
        self._total = total_steps
        self._step = None
        self._branches = {}
        self.reset_policy()

    def start_step(self, index: int) -> None:
        if not 0 <= index < self._total:
            raise ValueError(f"step {index} is outside the run's {self._total} steps: call start_run(total) first")
        if self._step is not None and index <= self._step:
            raise ValueError(f"steps must increase within a run: step {index} after step {self._step}")
        self._step = index

    def run_blocks(self, model: WanModel, p: Prepared, branches: Sequence[str]) -> torch.Tensor:
        if self._step is None:
            raise RuntimeError(
                f"{self.name} was asked for a forward outside a sampling run: call start_run(total_steps) and "
                "start_step(i) first (the engine's sample() does)"
            )
        rows = row_groups(branches, p.tokens.shape[0])
        device = p.tokens.device
        groups = {name: row_index(r, device) for name, r in rows.items()}
        forced: dict[str, bool] = {}
        for name, r in rows.items():
            b = self._branches.setdefault(name, _Branch())
            if b.last_step == self._step:
                raise RuntimeError(
                    f"branch {name!r} was evaluated twice in step {self._step}: {self.name} expects one model call "
                    "per branch per step"
                )
            b.last_step = self._step
            shape = (len(r), *p.tokens.shape[1:])
            limit = self.window.max_consecutive
            forced[name] = (
                not self.window.allows(self._step, self._total)
                or b.residual is None
                or b.residual_shape != shape
                or (limit > 0 and b.consecutive_skips >= limit)
            )
        compute = self.decide(p, groups, forced)
        for name, must in forced.items():
            if must and not compute[name]:
                raise AssertionError(f"{self.name} skipped branch {name!r} on a step it must compute")
        out = self._assemble(model, p, rows, groups, compute)
        for name in rows:
            b = self._branches[name]
            b.pattern.append(COMPUTED if compute[name] else SKIPPED)
            b.consecutive_skips = 0 if compute[name] else b.consecutive_skips + 1
        return out

    def skipped_so_far(self) -> tuple[tuple[str, int], ...]:
        return tuple((name, b.pattern.count(SKIPPED)) for name, b in self._branches.items())

    def end_run(self) -> StepCacheReport:
        report = StepCacheReport(
            self.name, self._total, tuple(BranchReport(n, "".join(b.pattern)) for n, b in self._branches.items())
        )
        self._branches = {}  # the residuals go with them
        self._step = None
        self.reset_policy()
        return report

    # -- mechanics ----------------------------------------------------------------------------------------------

    def _assemble(
        self,
        model: WanModel,
        p: Prepared,
        rows: Mapping[str, list[int]],
        groups: Mapping[str, RowIndex],
        compute: Mapping[str, bool],
    ) -> torch.Tensor:
        computing = [name for name in rows if compute[name]]
        if len(computing) == len(rows):  # the common case: one call on the whole batch
            out = model.run_blocks(p)
            for name, index in groups.items():
                self._store(name, out[index] - p.tokens[index])
            return out
        out = torch.empty_like(p.tokens)
        for name, index in groups.items():
            if not compute[name]:
                out[index] = p.tokens[index] + self._load(name, p.tokens.device)
        if computing:
            sub_rows = sorted(r for name in computing for r in rows[name])
            sub_index = row_index(sub_rows, p.tokens.device)
            sub = model.run_blocks(p.select(sub_index))
            out[sub_index] = sub
            for name in computing:
                within = row_index([sub_rows.index(r) for r in rows[name]], p.tokens.device)
                self._store(name, sub[within] - p.tokens[groups[name]])
        return out

    def _store(self, name: str, residual: torch.Tensor) -> None:
        b = self._branches[name]
        b.residual_shape = tuple(residual.shape)
        target = self.cache_device
        if target is None or target == residual.device:
            b.residual = residual
            return
        pinned = target.type == "cpu" and residual.is_cuda
        if b.residual is None or b.residual.shape != residual.shape or b.residual.dtype != residual.dtype:
            b.residual = torch.empty(residual.shape, dtype=residual.dtype, device=target, pin_memory=pinned)
        # Same-stream copies stay ordered: a later upload from this buffer reads what this download wrote.
        b.residual.copy_(residual, non_blocking=pinned)

    def _load(self, name: str, device: torch.device) -> torch.Tensor:
        residual = self._branches[name].residual
        assert residual is not None  # forced to compute otherwise
        return residual.to(device, non_blocking=residual.is_pinned())
