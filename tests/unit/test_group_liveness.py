"""Stopped and hung ranks are told without waiting for a collective's timeout, and a cancel ends a run within 2 s
whatever the ranks do (CPU, gloo, 2 processes).

The collective timeout is 60 s here and the stopped or stuck rank stays so for 60 s: every error below comes from the
owner's heartbeat and progress watch (``dax_core.runtime.liveness``), well before either.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

from dax_core.runtime.distributed import parallel_layout
from dax_core.runtime.group import GroupConfig, SampleCancelled, WorkerGroupError
from dax_core.runtime.liveness import Liveness, Position, Watchdog
from tests.unit.faulty_worker import HOLD_AFTER, HOLD_IN_BLOCK_SEED, HOLD_SEED, STALL_SEED
from tests.unit.faulty_worker import MODULE as FAULTY_WORKER
from tests.unit.group_helpers import (
    assert_all_gone,
    assert_same_latent,
    cached_groups,
    group_processes,
    next_prompt_starts_a_fresh_group,
    tiny_request,
)

COLLECTIVE_TIMEOUT_S = 60.0
LIVENESS = Liveness(heartbeat_s=0.25, silence_s=3.0, first_step_s=30.0, step_floor_s=3.0)  # cancel_s: 1 s
CONFIG = GroupConfig(
    2,
    device="cpu",
    parallel=parallel_layout(2),
    collective_timeout_s=COLLECTIVE_TIMEOUT_S,
    liveness=LIVENESS,
    worker_module=FAULTY_WORKER,
)
CANCEL_BOUND_S = 2.0
"""What a Cancel may take, whatever the ranks do: the ranks get ``cancel_s`` (1 s) to stop together, then every
process of the group is killed with SIGKILL, which a stopped process cannot delay."""
FAILURE_SLACK_S = 10.0
"""Past a limit, what a failure may take to be raised: the owner looks every 0.05 s, then hears the ranks out and
kills them (SIGKILL); generous for a loaded 2-core machine, and far below the 60 s that would mean a timeout."""


@pytest.fixture(scope="module")
def groups(tmp):
    yield from cached_groups(CONFIG, tmp)


def test_a_cancel_stops_every_rank_mid_step_and_keeps_the_group(groups, recipe, reference):
    group = groups.get(recipe)
    pids = group.worker_pids
    seen: list[int] = []
    held = dataclasses.replace(tiny_request(steps=40), seed=HOLD_IN_BLOCK_SEED)  # held after a block of step 3
    with pytest.raises(SampleCancelled) as cancelled:
        group.sample(held, on_step=lambda s, t: seen.append(s), should_cancel=lambda: HOLD_AFTER in seen)
    # every rank stopped inside step HOLD_AFTER + 1, at a block boundary: at the step boundary it would say step 3
    assert cancelled.value.step == HOLD_AFTER and not cancelled.value.group_lost
    assert group.alive and group.worker_pids == pids
    assert_same_latent(group.sample(tiny_request()), reference)  # their collectives stayed matched


def test_a_stopped_rank_and_a_cancel_end_the_run_within_2_s_and_the_next_prompt_works(tmp, groups, recipe, reference):
    group = groups.get(recipe)
    procs = group_processes(group)
    victim = group.worker_pids[1]
    seen: list[int] = []
    cancel_at: list[float] = []

    def stop_rank_1_at_the_hold(step: int, total: int) -> None:
        seen.append(step)
        if step == HOLD_AFTER:  # both ranks hold there, voting: rank 0 then waits in the vote for rank 1
            os.kill(victim, signal.SIGSTOP)

    def cancel() -> bool:
        if HOLD_AFTER in seen and not cancel_at:
            cancel_at.append(time.monotonic())
        return bool(cancel_at)

    held = dataclasses.replace(tiny_request(steps=40), seed=HOLD_SEED)
    with pytest.raises(SampleCancelled) as cancelled:
        group.sample(held, on_step=stop_rank_1_at_the_hold, should_cancel=cancel)
    took = time.monotonic() - cancel_at[0]
    assert took <= CANCEL_BOUND_S, f"the cancel took {took:.2f} s"
    assert cancelled.value.group_lost and not group.alive
    assert_all_gone(procs)  # the stopped rank too: SIGKILL needs no cooperation
    next_prompt_starts_a_fresh_group(groups, recipe, reference, group)


def test_a_stopped_rank_fails_the_run_by_its_silence_naming_it(groups, recipe, reference):
    group = groups.get(recipe)
    procs = group_processes(group)
    victim = group.worker_pids[1]
    stopped_at: list[float] = []

    def stop_rank_1(step: int, total: int) -> None:
        if step == 1:
            os.kill(victim, signal.SIGSTOP)  # alive but silent: its heartbeat thread stops too
            stopped_at.append(time.monotonic())

    with pytest.raises(WorkerGroupError) as failed:
        group.sample(tiny_request(steps=40), on_step=stop_rank_1)
    took = time.monotonic() - stopped_at[0]
    message = str(failed.value)
    assert f"rank 1 (pid {victim} on" in message and "has sent nothing for" in message, message
    assert "stopped or frozen" in message and "it last said: sampling step" in message, message
    assert "rank 0" not in message.split("\n")[0], message  # rank 0, waiting in a collective, kept beating
    assert LIVENESS.silence_s <= took <= LIVENESS.silence_s + FAILURE_SLACK_S < COLLECTIVE_TIMEOUT_S, took
    assert_all_gone(procs)
    next_prompt_starts_a_fresh_group(groups, recipe, reference, group)


def test_a_rank_stuck_while_alive_fails_the_run_by_the_step_limit_naming_it(groups, recipe, reference):
    group = groups.get(recipe)
    procs = group_processes(group)
    stuck = group.worker_pids[1]
    started = time.monotonic()
    with pytest.raises(WorkerGroupError) as failed:
        group.sample(dataclasses.replace(tiny_request(steps=40), seed=STALL_SEED))
    took = time.monotonic() - started
    message = str(failed.value)
    # step 1 and 2 ran (fast); step 3 stalls: its limit is the floor, as the slowest later step is far below it
    assert f"step {HOLD_AFTER + 1} has run for" in message and "at least 3 s" in message, message
    assert f"rank 1 (pid {stuck} on" in message and "fell behind the others" in message, message
    assert "rank 1" in message.split("fell behind")[0].rsplit(";", 1)[-1], message  # it is the one named behind
    assert took <= LIVENESS.step_floor_s + FAILURE_SLACK_S < COLLECTIVE_TIMEOUT_S, took
    assert_all_gone(procs)
    next_prompt_starts_a_fresh_group(groups, recipe, reference, group)


# -- the watch itself, on a clock of its own -----------------------------------------------------------------------

NAMES = {0: "rank 0 (pid 10 on here)", 1: "rank 1 (pid 11 on here)"}


def test_the_first_step_has_its_own_allowance_and_later_steps_a_multiple_of_the_slowest():
    watch = Watchdog(Liveness(first_step_s=100.0, step_floor_s=10.0, step_factor=5.0), NAMES, now=0.0)
    watch.start_run(watch.liveness, steps=10, now=0.0)
    for rank in NAMES:
        watch.heard(rank, "alive", {"phase": "sampling"}, now=50.0)
    assert watch.overdue(99.0) is None  # compiling: the first step may take 100 s
    assert "past its limit of the first step's allowance, 100 s" in (watch.overdue(101.0) or "")
    watch.step_done(1, now=101.0)
    watch.step_done(2, now=101.5)  # the first later step: 0.5 s
    assert watch.step_limit() == 10.0  # 5 x 0.5 s is below the floor
    watch.step_done(4, now=109.5)  # two steps in 8 s: 4 s each
    assert watch.step_limit() == 20.0
    for rank in NAMES:
        watch.heard(rank, "alive", {"phase": "sampling", "step": 4, "steps": 10}, now=120.0)
    assert watch.overdue(129.0) is None
    assert "5 x the slowest step so far (4.00 s)" in (watch.overdue(130.0) or "")


def test_the_rank_behind_is_named_and_silence_beats_a_stall():
    watch = Watchdog(Liveness(silence_s=5.0, step_floor_s=10.0), NAMES, now=0.0)
    watch.start_run(watch.liveness, steps=10, now=0.0)
    watch.step_done(1, now=1.0)
    ahead = {"phase": "sampling", "step": 1, "steps": 8, "forward": 0, "block": 3, "blocks": 30}
    watch.heard(0, "alive", ahead, now=12.0)
    watch.heard(1, "alive", {**ahead, "block": 1}, now=12.0)
    stall = watch.overdue(12.0) or ""
    assert "rank 1 (pid 11 on here) fell behind the others" in stall
    assert "rank 1 (pid 11 on here): sampling step 2 of 8, forward 1, 1 of 30 blocks done" in stall
    watch.heard(0, "alive", ahead, now=18.0)  # rank 1 says nothing more
    silent = watch.overdue(18.0) or ""
    assert silent.startswith("rank 1 (pid 11 on here) has sent nothing for 6 s") and "rank 0" not in silent


def test_liveness_limits_are_checked():
    with pytest.raises(ValueError, match="silence_s 2 must be at least 3 heartbeats"):
        Liveness(heartbeat_s=1.0, silence_s=2.0)
    with pytest.raises(ValueError, match="cancel_s must be a finite number of seconds > 0"):
        Liveness(cancel_s=0)
    with pytest.raises(ValueError, match="step_factor must be >= 1"):
        Liveness(step_factor=0.5)
    assert Position.from_fields({"phase": "sampling", "step": "x"}) == Position()  # a malformed heartbeat: unknown
    assert Position.from_fields({"phase": "sampling", "step": 2, "extra": 1}).step == 2
