"""Telling a working rank from a stopped or hung one, without waiting for a collective's timeout.

Every rank sends a heartbeat from a thread of its own while it works (loading, sampling): which phase it is in and
where (step, forward, block). The owner watches two things:

- **silence**: a rank that has sent nothing for ``silence_s`` is stopped or frozen (SIGSTOP, a debugger, a frozen
  machine): its heartbeat thread would speak even while its main thread waits in a long collective or kernel;
- **progress**: while sampling, a step that takes longer than its limit means a hang although every rank is alive
  (a kernel or a collective that never returns). The first step of a run has its own allowance (``first_step_s``:
  it includes torch.compile's warm-up, minutes at 14B); a later one may take ``step_factor`` times the slowest
  later step seen so far in this run, and at least ``step_floor_s``.

A compile warm-up or a slow first step is therefore not a hang: its ranks keep sending heartbeats, and the first
step is allowed ``first_step_s``. The rank that is behind the others (in step, forward, block) is the one they wait
for; the report names it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

HEARTBEAT_KIND = "alive"
"""The control-channel message of a heartbeat; its fields are a ``Position``'s."""


@dataclass(frozen=True)
class Liveness:
    """How the owner of a worker group tells a stopped or hung rank and how long a cancel may take (seconds)."""

    heartbeat_s: float = 1.0
    """How often each rank sends a heartbeat while it works (told to the ranks when the group starts)."""
    silence_s: float = 60.0
    """A rank that sends nothing for this long is taken for stopped: the group is taken down."""
    first_step_s: float = 1800.0
    """The allowance of a run's first step, which includes compilation (torch.compile) and warm-up."""
    step_floor_s: float = 60.0
    """A later step may always take this long..."""
    step_factor: float = 5.0
    """...or this many times the slowest later step of the run so far, whichever is longer."""
    cancel_s: float = 1.0
    """After a cancel, how long the ranks have to stop together; then the group is taken down (the run still ends
    as cancelled, and the next prompt starts a fresh group)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"Liveness.{f.name} must be a finite number of seconds > 0, got {value!r}")
        if self.silence_s < 3 * self.heartbeat_s:
            raise ValueError(
                f"Liveness.silence_s {self.silence_s:g} must be at least 3 heartbeats ({3 * self.heartbeat_s:g} s): "
                "a rank busy for a moment may miss one; raise silence_s or lower heartbeat_s"
            )
        if self.step_factor < 1:
            raise ValueError(
                f"Liveness.step_factor must be >= 1 (a multiple of the slowest step), got {self.step_factor}"
            )


@dataclass(frozen=True)
class Position:
    """What a rank is doing, as its heartbeat says."""

    phase: str = "starting"  # "loading" (joining, building the engine), "sampling", "stopping", "idle"
    step: int = 0  # steps done in the current request
    steps: int = 0
    forward: int = 0  # model forwards done in the current step (two per step when the CFG branches do not batch)
    block: int = 0  # transformer blocks done in the current forward
    blocks: int = 0

    def describe(self) -> str:
        if self.phase != "sampling":
            return self.phase
        where = f"sampling step {self.step + 1} of {self.steps}"
        if self.blocks:
            where += f", forward {self.forward + 1}, {self.block} of {self.blocks} blocks done"
        return where

    def key(self) -> tuple[int, int, int]:
        return (self.step, self.forward, self.block)

    @classmethod
    def from_fields(cls, data: dict[str, Any]) -> Position:
        """The position a heartbeat's fields describe; fields of the wrong type give the unknown position."""
        values = {f.name: data.get(f.name, f.default) for f in fields(cls)}
        phase_ok = isinstance(values["phase"], str)
        counts_ok = all(isinstance(v, int) and not isinstance(v, bool) for k, v in values.items() if k != "phase")
        return cls(**values) if phase_ok and counts_ok else cls()


class Watchdog:
    """The owner's view of every rank's liveness and of the run's progress (time is the caller's monotonic clock)."""

    def __init__(self, liveness: Liveness, names: dict[int, str], now: float) -> None:
        self.liveness = liveness
        self.names = names  # rank -> "rank 1 (pid 123 on host)"
        self.last_heard = dict.fromkeys(names, now)
        self.positions = {rank: Position() for rank in names}
        self.sampling = False
        self.steps_done = 0
        self.step_started = now
        self.slowest_step = 0.0

    def heard(self, rank: int, kind: str, data: dict[str, Any], now: float) -> None:
        self.last_heard[rank] = now
        if kind == HEARTBEAT_KIND:
            self.positions[rank] = Position.from_fields(data)

    def start_run(self, liveness: Liveness, steps: int, now: float) -> None:
        """A request of ``steps`` steps went out: its first step starts now (earlier silences do not count)."""
        self.liveness = liveness
        self.last_heard = dict.fromkeys(self.names, now)
        self.positions = {rank: Position("sampling", steps=steps) for rank in self.names}
        self.sampling = True
        self.steps_done = 0
        self.step_started = now
        self.slowest_step = 0.0

    def step_done(self, step: int, now: float) -> None:
        if step <= self.steps_done:
            return
        if self.steps_done >= 1:  # the first step (compilation, warm-up) is not a measure of the others
            self.slowest_step = max(self.slowest_step, (now - self.step_started) / (step - self.steps_done))
        self.steps_done = step
        self.step_started = now

    def end_run(self) -> None:
        self.sampling = False

    def step_limit(self) -> float:
        if self.steps_done == 0:
            return self.liveness.first_step_s
        return max(self.liveness.step_floor_s, self.liveness.step_factor * self.slowest_step)

    def overdue(self, now: float) -> str | None:
        """Why the group must be taken down now (a silent rank, a step past its limit), or None."""
        silent = sorted(r for r, t in self.last_heard.items() if now - t > self.liveness.silence_s)
        if silent:
            return "; ".join(self._silence(r, now) for r in silent)
        if self.sampling and now - self.step_started > self.step_limit():
            return self._stall(now)
        return None

    def _silence(self, rank: int, now: float) -> str:
        return (
            f"{self.names[rank]} has sent nothing for {now - self.last_heard[rank]:.0f} s (a working rank sends a "
            f"heartbeat every {self.liveness.heartbeat_s:g} s; the limit is {self.liveness.silence_s:g} s): the "
            f"process is stopped or frozen (SIGSTOP, a debugger, an overloaded machine); it last said: "
            f"{self.positions[rank].describe()}"
        )

    def _stall(self, now: float) -> str:
        waited = now - self.step_started
        if self.steps_done == 0:
            limit = f"the first step's allowance, {self.liveness.first_step_s:g} s (compilation included)"
        else:
            limit = (
                f"{self.step_limit():.0f} s: {self.liveness.step_factor:g} x the slowest step so far "
                f"({self.slowest_step:.2f} s), at least {self.liveness.step_floor_s:g} s"
            )
        where = "; ".join(f"{self.names[r]}: {p.describe()}" for r, p in sorted(self.positions.items()))
        keys = {r: p.key() for r, p in self.positions.items()}
        behind = sorted(r for r, k in keys.items() if k == min(keys.values()))
        if len(behind) < len(keys):
            culprit = (
                f"{', '.join(self.names[r] for r in behind)} fell behind the others, which wait for it in a "
                "collective: it is hung in a kernel or a collective of its own"
            )
        else:
            culprit = "every rank is at the same point, alive: a kernel or a collective there does not return"
        return (
            f"step {self.steps_done + 1} has run for {waited:.0f} s, past its limit of {limit}; {culprit} "
            f"(positions: {where})"
        )
