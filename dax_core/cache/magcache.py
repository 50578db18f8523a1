"""MagCache (Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache") for Wan2.1.

The ratio of the residual's magnitude at consecutive steps is nearly the same for every prompt, so it is
calibrated once per model (``magcache_ratios.py``). Per branch, from the last computed step on, the product of
the ratios estimates how far the cached residual has drifted; ``|1 - product|`` is accumulated and, while the sum
stays under the threshold (and at most ``max_consecutive_skips`` in a row), the block stack is skipped and the
branch's cached residual reused. The decisions depend on the step index alone, so every sequence-parallel rank
takes the same ones without communicating.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .magcache_ratios import MAG_RATIOS
from .residual import ResidualStepCache, RowIndex, SkipWindow

if TYPE_CHECKING:
    from ..models.wan import Prepared

BRANCHES: tuple[str, ...] = ("cond", "uncond")  # the published lists interleave these two


def resample(ratios: Sequence[float], steps: int) -> tuple[float, ...]:
    """Nearest-neighbour resampling of one branch's per-step ratios to a run of ``steps`` steps (as published:
    index ``round(i * (len - 1) / (steps - 1))``, halves to even)."""
    if steps == len(ratios):
        return tuple(ratios)
    if steps == 1:
        return (ratios[-1],)
    scale = (len(ratios) - 1) / (steps - 1)
    return tuple(ratios[round(i * scale)] for i in range(steps))


def branch_ratios(model: str, steps: int) -> dict[str, tuple[float, ...]]:
    """The calibrated ratios of ``model`` per CFG branch, for a run of ``steps`` steps."""
    if model not in MAG_RATIOS:
        raise ValueError(f"no published MagCache ratios for {model!r}; known models: {', '.join(MAG_RATIOS)}")
    table = MAG_RATIOS[model]
    return {name: resample(table[i::2], steps) for i, name in enumerate(BRANCHES)}


@dataclass
class _Drift:
    ratio: float = 1.0  # product of the ratios since the last computed step
    error: float = 0.0  # accumulated |1 - ratio|


class MagCache(ResidualStepCache):
    """MagCache on Wan2.1's block stack: the calibrated ratios of ``model``, one drift and one residual per branch."""

    name = "MagCache"

    def __init__(
        self,
        model: str,
        threshold: float,
        max_consecutive_skips: int = 2,
        retention_ratio: float = 0.2,
        end: float = 1.0,
        cache_device: torch.device | str | None = None,
    ) -> None:
        """``retention_ratio``: the fraction of the first steps always computed; ``end``: the fraction of the steps
        from which every step is computed (the last step always is). ``max_consecutive_skips``: 0 for no limit."""
        if model not in MAG_RATIOS:
            raise ValueError(f"no published MagCache ratios for {model!r}; known models: {', '.join(MAG_RATIOS)}")
        if not math.isfinite(threshold) or threshold < 0:
            raise ValueError(f"MagCache threshold must be a finite number >= 0 (0: never skip), got {threshold}")
        super().__init__(SkipWindow(1, retention_ratio, end, max_consecutive_skips), cache_device)
        self.model = model
        self.threshold = float(threshold)
        self._ratios: dict[str, tuple[float, ...]] = {}
        self._drift: dict[str, _Drift] = {}

    def reset_policy(self) -> None:
        self._ratios = branch_ratios(self.model, self.total_steps) if self.total_steps else {}
        self._drift = {}

    def decide(self, p: Prepared, groups: Mapping[str, RowIndex], forced: Mapping[str, bool]) -> dict[str, bool]:
        step = self.step
        assert step is not None
        decisions: dict[str, bool] = {}
        for name in groups:
            if name not in self._ratios:
                raise ValueError(
                    f"MagCache has calibrated ratios for the branches {', '.join(BRANCHES)}, not {name!r}: "
                    "name each batch row's CFG branch"
                )
            d = self._drift.setdefault(name, _Drift())
            compute = forced[name]
            if not compute:
                d.ratio *= self._ratios[name][step]
                d.error += abs(1.0 - d.ratio)
                compute = not d.error < self.threshold
            if compute:
                self._drift[name] = _Drift()
            decisions[name] = compute
        return decisions
