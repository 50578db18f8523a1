"""A worker-group rank that fails on purpose, for the failure tests (the launcher runs it as a module).

It is the real worker with the real engine; only a request whose seed is ``RAISE_SEED`` makes the last rank raise
after its first step, while the other ranks go on into the next step's collective.
"""

from __future__ import annotations

import torch

from dax_core.runtime.distributed import ParallelConfig, RankEnv
from dax_core.runtime.engine import SampleRequest, SampleResult, StepCallback
from dax_core.runtime.worker import SamplingEngine, default_builder, main

RAISE_SEED = 666_001
MODULE = "tests.unit.faulty_worker"


class InjectedFault(RuntimeError):
    pass


class FaultyEngine:
    def __init__(self, engine: SamplingEngine, env: RankEnv) -> None:
        self.engine = engine
        self.faulty = env.rank == env.world_size - 1

    def sample(self, req: SampleRequest, on_step: StepCallback | None = None) -> SampleResult:
        if req.seed != RAISE_SEED or not self.faulty:
            return self.engine.sample(req, on_step)

        def step_then_fail(i: int, total: int, x: torch.Tensor) -> None:
            if on_step is not None:
                on_step(i, total, x)
            raise InjectedFault(f"injected fault after step {i + 1}")

        return self.engine.sample(req, step_then_fail)


def build(recipe, device: torch.device, parallel: ParallelConfig | None, env: RankEnv) -> FaultyEngine:
    return FaultyEngine(default_builder(recipe, device, parallel, env), env)


if __name__ == "__main__":
    raise SystemExit(main(build))
