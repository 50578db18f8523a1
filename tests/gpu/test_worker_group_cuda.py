"""The worker group on 2 GPUs (NCCL): the in-process result, Cancel (at a step, mid-step, and with a stopped rank),
a stopped rank told by its silence, nothing listening beyond loopback, and a rank killed with SIGKILL that ends the
run with a clear error, leaves no process on the GPUs, gives their memory back, and lets a fresh group run."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time

import pytest
import torch

from dax_core.runtime.distributed import parallel_layout
from dax_core.runtime.engine import WanEngine
from dax_core.runtime.group import GroupConfig, SampleCancelled, WorkerGroup, WorkerGroupError
from dax_core.runtime.liveness import Liveness
from tests.unit.faulty_worker import HOLD_AFTER, HOLD_IN_BLOCK_SEED, HOLD_SEED
from tests.unit.faulty_worker import MODULE as FAULTY_WORKER
from tests.unit.group_helpers import assert_all_gone, group_processes, tiny_recipe, tiny_request

CANCEL_BOUND_S = 2.0  # the ranks get Liveness.cancel_s (1.5 s) to stop together, then SIGKILL needs no cooperation

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")


def _gpu_pids() -> set[int]:
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True, text=True, check=True
    ).stdout
    return {int(line) for line in out.split() if line.strip().isdigit()}


def _used_mib(index: int) -> int:
    out = subprocess.run(
        ["nvidia-smi", f"--id={index}", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip())


def test_two_gpu_group_cancel_and_sigkill(tmp_path):
    recipe = tiny_recipe(tmp_path)
    req = tiny_request()
    reference = WanEngine.build(recipe, "cuda:0").sample(req).latent
    used_before = _used_mib(1)  # this process never touches GPU 1
    config = GroupConfig(
        2, device="cuda", parallel=parallel_layout(2), collective_timeout_s=60, worker_module=FAULTY_WORKER
    )
    group = WorkerGroup(recipe, config)
    try:
        workers = set(group.worker_pids.values())
        assert workers <= _gpu_pids()
        assert "sequence parallel on rank 1: 2 GPUs: ulysses=2" in group.launcher_log()
        # the tokens split over 2 GPUs: float32 matmuls on token slices round differently (~1e-6 per step)
        torch.testing.assert_close(group.sample(req).latent, reference, rtol=1e-4, atol=1e-5)

        seen: list[int] = []
        with pytest.raises(SampleCancelled) as cancelled:
            held = dataclasses.replace(tiny_request(steps=200), seed=HOLD_SEED)  # held after step HOLD_AFTER
            group.sample(held, on_step=lambda s, t: seen.append(s), should_cancel=lambda: HOLD_AFTER in seen)
        assert cancelled.value.step == HOLD_AFTER and group.alive

        seen.clear()  # mid-step: the block votes run on a gloo group of their own, next to NCCL
        with pytest.raises(SampleCancelled) as cancelled:
            held = dataclasses.replace(tiny_request(steps=200), seed=HOLD_IN_BLOCK_SEED)
            group.sample(held, on_step=lambda s, t: seen.append(s), should_cancel=lambda: HOLD_AFTER in seen)
        assert cancelled.value.step == HOLD_AFTER and not cancelled.value.group_lost and group.alive
        torch.testing.assert_close(group.sample(req).latent, reference, rtol=1e-4, atol=1e-5)

        # NCCL's bootstrap and gloo's pairs: nothing of the group listens beyond loopback
        for p in group_processes(group):
            listening = [c.laddr.ip for c in p.net_connections("all") if c.status == "LISTEN"]
            assert listening and all(ip in ("127.0.0.1", "::1") for ip in listening), (p.pid, listening)

        procs = group_processes(group)
        victim = group.worker_pids[1]
        with pytest.raises(WorkerGroupError, match=f"rank 1 \\(pid {victim}"):
            group.sample(tiny_request(steps=200), on_step=lambda s, t: s == 2 and os.kill(victim, signal.SIGKILL))
        assert_all_gone(procs)
    finally:
        group.close()
    deadline = time.monotonic() + 20
    while (workers & _gpu_pids() or _used_mib(1) > used_before + 64) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not workers & _gpu_pids(), "a worker still holds a GPU"
    assert _used_mib(1) <= used_before + 64, "GPU 1 memory was not given back"  # 64 MiB: driver bookkeeping

    with WorkerGroup(recipe, config) as fresh:  # the next prompt
        torch.testing.assert_close(fresh.sample(req).latent, reference, rtol=1e-4, atol=1e-5)


def test_two_gpu_group_with_a_stopped_rank(tmp_path):
    recipe = tiny_recipe(tmp_path)
    liveness = Liveness(heartbeat_s=0.25, silence_s=3.0)
    config = GroupConfig(
        2, device="cuda", parallel=parallel_layout(2), collective_timeout_s=120, liveness=liveness,
        worker_module=FAULTY_WORKER,
    )  # fmt: skip
    with WorkerGroup(recipe, config) as group:  # a Cancel while rank 1 is stopped: within 2 s
        procs, victim = group_processes(group), group.worker_pids[1]
        seen: list[int] = []
        cancel_at: list[float] = []

        def stop_rank_1(step: int, total: int) -> None:
            seen.append(step)
            if step == HOLD_AFTER:
                os.kill(victim, signal.SIGSTOP)

        def cancel() -> bool:
            if HOLD_AFTER in seen and not cancel_at:
                cancel_at.append(time.monotonic())
            return bool(cancel_at)

        held = dataclasses.replace(tiny_request(steps=200), seed=HOLD_SEED)
        with pytest.raises(SampleCancelled) as cancelled:
            group.sample(held, on_step=stop_rank_1, should_cancel=cancel)
        assert time.monotonic() - cancel_at[0] <= CANCEL_BOUND_S and cancelled.value.group_lost
        assert_all_gone(procs)
    with WorkerGroup(recipe, config) as group:  # no Cancel: told by its silence, long before the 120 s timeout
        procs, victim = group_processes(group), group.worker_pids[1]
        started = time.monotonic()
        with pytest.raises(WorkerGroupError, match=f"rank 1 \\(pid {victim} on .* has sent nothing for"):
            group.sample(tiny_request(steps=200), on_step=lambda s, t: s == 2 and os.kill(victim, signal.SIGSTOP))
        assert time.monotonic() - started < liveness.silence_s + 10.0  # 10 s: teardown on a busy machine
        assert_all_gone(procs)
