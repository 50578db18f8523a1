"""The self-attention schedule interface: which kernel each layer runs at each step, and what that computed.

A schedule sits on one model instance (``WanModel.self_attention_schedule``). Before the block stack runs, the model
asks it for one self-attention kernel per layer for the video's grid (``layer_kernels``); the engine brackets every
sampling run with ``start_run`` / ``end_run`` and announces each step with ``start_step``, so a schedule can keep
the first steps dense. Radial attention implements it; a forward outside a sampling run counts as a step after
the dense ones.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from .registry import AttentionFn


@dataclass(frozen=True)
class DensityReport:
    """The fraction of dense self-attention computed at each step of a run (1.0: dense; None: no forward ran)."""

    name: str
    densities: tuple[float | None, ...]

    @property
    def mean(self) -> float | None:
        """Over the steps whose blocks ran: the attention work of the run relative to dense attention."""
        ran = [d for d in self.densities if d is not None]
        return sum(ran) / len(ran) if ran else None

    def summary(self) -> str:
        if self.mean is None:
            return f"{self.name}: no step ran the transformer blocks"
        runs = []
        for value, group in itertools.groupby(self.densities):
            text = "skipped" if value is None else f"{value:.2f}"
            runs.append(f"{text} x{len(list(group))}")
        return f"{self.name} density per step: {', '.join(runs)} ({self.mean:.2f} of dense attention over the run)"


class SelfAttentionSchedule(ABC):
    """Per-layer self-attention kernels of one model instance, with state per sampling run."""

    name: str = "self-attention schedule"
    token_alignment: int = 1
    """Sequence parallelism cuts the tokens into slices of a multiple of this many tokens, so that a ring's chunks
    start where the schedule's blocks do."""

    @abstractmethod
    def layer_kernels(self, grid: tuple[int, int, int], num_layers: int, dense: AttentionFn) -> Sequence[AttentionFn]:
        """One self-attention kernel per layer for a video of ``grid`` (frames, height, width in patches); ``dense``
        is the model's own kernel, for the layers and steps the schedule keeps dense."""

    @abstractmethod
    def check_ring(self) -> None:
        """Raise ValueError, saying what to change, if the schedule's kernels cannot serve ring attention."""

    @abstractmethod
    def start_run(self, total_steps: int, first_step: int = 0) -> None:
        """A sampling run of ``total_steps`` steps begins, at step ``first_step`` of its schedule (a run cut by
        start_at_step, such as the second expert of a chain, starts past the dense steps the first one ran)."""

    @abstractmethod
    def start_step(self, index: int) -> None:
        """The next forwards belong to step ``index`` (0-based) of the current run (``first_step + index`` of the
        schedule)."""

    @abstractmethod
    def end_run(self) -> DensityReport:
        """The run is over (finished or cancelled): what each of its steps computed."""
