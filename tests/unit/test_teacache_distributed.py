"""Sequence parallelism: every rank takes the single-process TeaCache decisions (2 and 4 gloo processes on CPU).

Decision level: each rank holds a shard of the tokens of the same modulated input (uneven shards), or a
replica that differs in its last bits; model level: the tiny engine with TeaCache applied through
``BuildEnv.sequence_group`` on every rank. With the tokens really split over ranks, the sampled latent and the
schedule are checked in test_sequence_parallel.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dax_core.runtime.group import free_port
from tests.environment import REPO
from tests.unit import teacache_sp_worker as worker

TIMEOUT_S = 240


def _run_ranks(world: int, tmp_path: Path) -> list[dict]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = []
    for rank in range(world):
        out = tmp_path / f"rank{rank}.json"
        cmd = [sys.executable, "-m", "tests.unit.teacache_sp_worker", "--rank", str(rank), "--world", str(world)]
        cmd += ["--port", str(port), "--out", str(out)]
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True), out))
    errors = []
    try:
        for proc, _ in procs:
            _, err = proc.communicate(timeout=TIMEOUT_S)
            if proc.returncode != 0:
                errors.append(err[-3000:])
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not errors, "\n".join(errors)
    return [json.loads(out.read_text()) for _, out in procs]


@pytest.fixture(scope="module")
def single_process() -> dict:
    full = {n: worker.modulated_inputs(s) for n, s in worker.BRANCH_SEEDS.items()}
    return {"policy": worker.run_policy(full, None, sharded=False), "model": worker.run_model(None, 1, 0)}


def test_the_single_process_reference_exercises_both_outcomes(single_process):
    for decisions in single_process["policy"]["decisions"].values():
        assert any(decisions[1:-1]) and not all(decisions[1:-1])
    assert single_process["policy"]["decisions"]["cond"] != single_process["policy"]["decisions"]["uncond"]
    for pattern in single_process["model"].values():
        assert "S" in pattern and pattern.count("C") > 2


@pytest.mark.parametrize("world", [2, 4])
def test_every_rank_takes_the_single_process_decisions(world, tmp_path, single_process):
    ranks = _run_ranks(world, tmp_path)
    shard_sizes = [r["shard_tokens"][0] for r in ranks]
    assert sum(shard_sizes) == worker.TOKENS and len(set(shard_sizes)) > 1  # really split, unevenly
    want = single_process["policy"]
    for r in ranks:
        assert r["sharded"]["decisions"] == want["decisions"]
        assert r["replicated"]["decisions"] == want["decisions"]
        for name, expected in want["distances"].items():
            # replicated: rank 0's sums are taken as they are, so the distance is the single-process one exactly
            assert _same(r["replicated"]["distances"][name], expected, rel=0.0)
            # sharded: float64 sums in another order, ~1e-16 relative apart
            assert _same(r["sharded"]["distances"][name], expected, rel=1e-12)
        assert r["model"] == single_process["model"]


def _same(got: list[float], want: list[float], rel: float) -> bool:
    return len(got) == len(want) and all(
        (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rel, abs=0.0)
        for a, b in zip(got, want, strict=True)
    )
