"""A worker-group rank that fails on purpose, for the failure tests (the launcher runs it as a module).

It is the real worker with the real engine; only a request whose seed is ``RAISE_SEED`` makes the last rank raise
after its first step, while the other ranks go on into the next step's collective, and one whose seed is
``HOLD_SEED`` makes every rank hold at the boundary after step ``HOLD_AFTER`` (its progress sent) until a cancel
reaches them (the worker's own step callback, the stop vote, runs again every ``HOLD_POLL_S``): a cancel sent then
must stop every rank at that boundary, however slowly the owner reacts.
"""

from __future__ import annotations

import time

import torch

from dax_core.runtime.distributed import ParallelConfig, RankEnv
from dax_core.runtime.engine import SampleRequest, SampleResult, StepCallback
from dax_core.runtime.progress import ProgressCallback
from dax_core.runtime.worker import SamplingEngine, default_builder, main

RAISE_SEED = 666_001
HOLD_SEED = 666_002
HOLD_AFTER = 2
HOLD_POLL_S = 0.05
HOLD_LIMIT_S = 60.0  # then go on: a test whose cancel never came fails on the step it sees
MODULE = "tests.unit.faulty_worker"


class InjectedFault(RuntimeError):
    pass


class FaultyEngine:
    def __init__(self, engine: SamplingEngine, env: RankEnv) -> None:
        self.engine = engine
        self.faulty = env.rank == env.world_size - 1

    def sample(
        self,
        req: SampleRequest,
        on_step: StepCallback | None = None,
        on_progress: ProgressCallback | None = None,
        preview: bool = False,
    ) -> SampleResult:
        if req.seed == HOLD_SEED and on_step is not None:
            return self.engine.sample(req, _holding(on_step), on_progress, preview)
        if req.seed != RAISE_SEED or not self.faulty:
            return self.engine.sample(req, on_step, on_progress, preview)

        def step_then_fail(i: int, total: int, x: torch.Tensor) -> None:
            if on_step is not None:
                on_step(i, total, x)
            raise InjectedFault(f"injected fault after step {i + 1}")

        return self.engine.sample(req, step_then_fail, on_progress, preview)


def _holding(on_step: StepCallback) -> StepCallback:
    def hold(i: int, total: int, x: torch.Tensor) -> None:
        on_step(i, total, x)
        if i + 1 != HOLD_AFTER:
            return
        # the same number of rounds on every rank: the stop vote inside is a collective
        for _ in range(round(HOLD_LIMIT_S / HOLD_POLL_S)):
            time.sleep(HOLD_POLL_S)
            on_step(i, total, x)  # raises Cancelled on every rank once a cancel reached any of them

    return hold


def build(recipe, device: torch.device, parallel: ParallelConfig | None, env: RankEnv) -> FaultyEngine:
    return FaultyEngine(default_builder(recipe, device, parallel, env), env)


if __name__ == "__main__":
    raise SystemExit(main(build))
