"""A worker-group rank that fails on purpose, for the failure tests (the group runs it as its worker module).

It is the real worker with the real engine; only:

- a request whose seed is ``RAISE_SEED`` makes the last rank raise after its first step, while the other ranks go on
  into the next step's collective;
- one whose seed is ``HOLD_SEED`` makes every rank hold at the boundary after step ``HOLD_AFTER`` until a cancel
  reaches them (the worker's own step callback, progress and stop vote included, runs again every ``HOLD_POLL_S``):
  a cancel sent then must stop every rank at that boundary, however slowly the owner reacts;
- one whose seed is ``HOLD_IN_BLOCK_SEED`` holds the same way inside step ``HOLD_AFTER + 1``, after its first
  transformer block (the block callback, stop vote included, runs again): a cancel must stop every rank there,
  mid-step;
- one whose seed is ``STALL_SEED`` makes the last rank stop making progress inside step ``HOLD_AFTER + 1``, after
  its first block and before its stop vote, for ``HOLD_LIMIT_S``: alive (its heartbeat goes on) but stuck, while
  the others wait for it in that vote;
- ``$WAIT_FOR_ENV`` names a file each rank waits for before it connects (a test does something first);
- ``$WRONG_SECRET_ENV`` makes the last rank answer the owner's challenge with another secret;
- ``$FAIL_BUILD_ENV`` makes the last rank raise while it builds the engine (what a machine without the model file
  at the recipe's path sees).
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import torch

from dax_core.runtime.control import new_secret
from dax_core.runtime.distributed import ParallelConfig, RankEnv
from dax_core.runtime.engine import BlockCallback, SampleRequest, SampleResult, StepCallback
from dax_core.runtime.worker import SamplingEngine, default_builder, main

RAISE_SEED = 666_001
HOLD_SEED = 666_002
HOLD_IN_BLOCK_SEED = 666_003
STALL_SEED = 666_004
HOLD_AFTER = 2
HOLD_POLL_S = 0.05
HOLD_LIMIT_S = 60.0  # then go on: a test whose cancel never came fails on the step it sees
WAIT_FOR_ENV = "DAX_TEST_WAIT_FOR"
WRONG_SECRET_ENV = "DAX_TEST_WRONG_SECRET"
FAIL_BUILD_ENV = "DAX_TEST_FAIL_BUILD"
MODULE = "tests.unit.faulty_worker"
HOLD_ROUNDS = round(HOLD_LIMIT_S / HOLD_POLL_S)  # the same number on every rank: the stop vote inside is a collective


class InjectedFault(RuntimeError):
    pass


class FaultyEngine:
    def __init__(self, engine: SamplingEngine, env: RankEnv) -> None:
        self.engine = engine
        self.faulty = env.rank == env.world_size - 1

    def sample(
        self, req: SampleRequest, on_step: StepCallback | None = None, on_block: BlockCallback | None = None
    ) -> SampleResult:
        if req.seed == HOLD_SEED and on_step is not None:
            return self.engine.sample(req, _holding(on_step), on_block)
        if req.seed == HOLD_IN_BLOCK_SEED and on_step is not None and on_block is not None:
            steps_done: list[int] = []

            def count(i: int, total: int, x: torch.Tensor) -> None:
                steps_done.append(i)
                on_step(i, total, x)

            return self.engine.sample(req, count, _holding_in_block(on_block, steps_done))
        if req.seed == STALL_SEED and self.faulty and on_step is not None and on_block is not None:
            steps_done = []

            def note(i: int, total: int, x: torch.Tensor) -> None:
                steps_done.append(i)
                on_step(i, total, x)

            def stall(index: int, blocks: int) -> None:
                if len(steps_done) == HOLD_AFTER and index == 0:
                    time.sleep(HOLD_LIMIT_S)  # alive, stuck: the heartbeat thread goes on meanwhile
                on_block(index, blocks)

            return self.engine.sample(req, note, stall)
        if req.seed != RAISE_SEED or not self.faulty:
            return self.engine.sample(req, on_step, on_block)

        def step_then_fail(i: int, total: int, x: torch.Tensor) -> None:
            if on_step is not None:
                on_step(i, total, x)
            raise InjectedFault(f"injected fault after step {i + 1}")

        return self.engine.sample(req, step_then_fail, on_block)


def _holding(on_step: StepCallback) -> StepCallback:
    def hold(i: int, total: int, x: torch.Tensor) -> None:
        on_step(i, total, x)
        if i + 1 != HOLD_AFTER:
            return
        for _ in range(HOLD_ROUNDS):
            time.sleep(HOLD_POLL_S)
            on_step(i, total, x)  # raises Cancelled on every rank once a cancel reached any of them

    return hold


def _holding_in_block(on_block: BlockCallback, steps_done: list[int]) -> BlockCallback:
    held = []

    def hold(index: int, blocks: int) -> None:
        on_block(index, blocks)
        if len(steps_done) != HOLD_AFTER or index != 0 or held:
            return
        held.append(index)
        for _ in range(HOLD_ROUNDS):
            time.sleep(HOLD_POLL_S)
            on_block(index, blocks)  # raises Cancelled on every rank once a cancel reached any of them

    return hold


def build(recipe, device: torch.device, parallel: ParallelConfig | None, env: RankEnv) -> FaultyEngine:
    if os.environ.get(FAIL_BUILD_ENV) and env.rank == env.world_size - 1:
        raise InjectedFault(f"injected fault while building the engine from {recipe.weights}")
    return FaultyEngine(default_builder(recipe, device, parallel, env), env)


def _before_joining() -> None:
    wait_for = os.environ.get(WAIT_FOR_ENV)
    if wait_for:
        deadline = time.monotonic() + HOLD_LIMIT_S
        while not Path(wait_for).exists() and time.monotonic() < deadline:
            time.sleep(HOLD_POLL_S)
    env = RankEnv.from_environ()
    if os.environ.get(WRONG_SECRET_ENV) and env.rank == env.world_size - 1:
        sys.stdin.readline()  # the owner's secret, replaced by another
        sys.stdin = io.StringIO(new_secret() + "\n")


if __name__ == "__main__":
    _before_joining()
    raise SystemExit(main(build))
