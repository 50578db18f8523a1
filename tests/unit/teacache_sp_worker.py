"""One rank of the sequence-parallel TeaCache checks (gloo on CPU). Started by test_teacache_distributed.py.

    python -m tests.unit.teacache_sp_worker --rank R --world W --port P --out result.json

Writes the decisions this rank took (decision level: sharded and replicated inputs; model level: the tiny engine
with TeaCache applied through BuildEnv.sequence_group) so the test can compare every rank with one process.
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from dax_core.accelerations import BuildEnv, apply_accelerations
from dax_core.cache.config import TeacacheConfig
from dax_core.cache.teacache import TeaCachePolicy
from dax_core.recipe import Recipe
from tests.unit.tiny_wan import tiny_engine, tiny_request

STEPS = 16
TOKENS, WIDTH = 37, 16  # 37 tokens: uneven shards on 2 and 4 ranks
COEFFICIENTS = (1.0, 0.0)  # rescale(x) = x: the sums are the measured relative changes
THRESHOLD = 0.25
MODEL_CONFIG = TeacacheConfig(threshold=2.0, mode="e", coefficients=(1.0, 0.0))


def modulated_inputs(branch_seed: int) -> list[torch.Tensor]:
    """A drifting [1, TOKENS, WIDTH] input per step whose relative change varies from ~2 % to ~30 %."""
    g = torch.Generator().manual_seed(branch_seed)
    x = torch.randn(1, TOKENS, WIDTH, generator=g)
    out = [x]
    for i in range(1, STEPS):
        scale = 0.02 + 0.28 * ((i * 7 + branch_seed) % 5) / 4
        x = x + scale * torch.randn(x.shape, generator=g) * x.abs().mean()
        out.append(x)
    return out


BRANCH_SEEDS = {"cond": 11, "uncond": 22}


def run_policy(
    inputs: dict[str, list[torch.Tensor]], group: dist.ProcessGroup | None, sharded: bool
) -> dict[str, list]:
    """Decisions and measured distances per branch over the run (first and last step forced, as in a run)."""
    policy = TeaCachePolicy(COEFFICIENTS, THRESHOLD, group=group, sharded=sharded)
    decisions: dict[str, list[bool]] = {n: [] for n in inputs}
    distances: dict[str, list[float]] = {n: [] for n in inputs}
    for i in range(STEPS):
        forced = {n: i in (0, STEPS - 1) for n in inputs}
        got = policy.decide({n: xs[i] for n, xs in inputs.items()}, forced)
        for n in inputs:
            decisions[n].append(got[n])
            distances[n].append(policy.track(n).distance)
    return {"decisions": decisions, "distances": distances}


def run_model(group: dist.ProcessGroup | None, world: int, rank: int) -> dict:
    engine = tiny_engine()
    if rank > 0:  # replicas that differ in the last bits must still decide as rank 0 does
        with torch.no_grad():
            engine.model.time_embedding[2].bias.add_(1e-6 * rank)
    apply_accelerations(
        engine.model, Recipe("w").with_acceleration(MODEL_CONFIG), BuildEnv(engine.device, world, group)
    )
    result = engine.sample(tiny_request(steps=STEPS))
    return {b.name: b.pattern for b in result.step_cache.branches}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{args.port}",
        rank=args.rank,
        world_size=args.world,
        timeout=timedelta(seconds=60),
    )
    try:
        group = dist.group.WORLD
        full = {n: modulated_inputs(s) for n, s in BRANCH_SEEDS.items()}
        shards = {n: [x.tensor_split(args.world, dim=1)[args.rank] for x in xs] for n, xs in full.items()}
        g = torch.Generator().manual_seed(100 + args.rank)
        perturbed = {
            n: [x + (1e-6 * args.rank) * torch.randn(x.shape, generator=g) for x in xs] for n, xs in full.items()
        }
        result = {
            "shard_tokens": [shards["cond"][0].shape[1]],
            "sharded": run_policy(shards, group, sharded=True),
            "replicated": run_policy(perturbed, group, sharded=False),
            "model": run_model(group, args.world, args.rank),
        }
        args.out.write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
