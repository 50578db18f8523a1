"""The worker group with 4 processes (cancel, a rank raising, SIGKILL), and spread over two launcher agents that
meet at one c10d endpoint on 127.0.0.1, as the agents of two machines would."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess

import pytest

from dax_core.runtime.control import SECRET_ENV, new_secret
from dax_core.runtime.distributed import parallel_layout
from dax_core.runtime.group import (
    GroupConfig,
    SampleCancelled,
    WorkerError,
    WorkerGroup,
    WorkerGroupError,
    agent_command,
    agent_environment,
    free_port,
)
from tests.unit.faulty_worker import HOLD_AFTER, HOLD_SEED, RAISE_SEED
from tests.unit.faulty_worker import MODULE as FAULTY_WORKER
from tests.unit.group_helpers import (
    assert_all_gone,
    assert_same_latent,
    group_processes,
    tiny_request,
)


def test_four_ranks_cancel_raise_and_sigkill(recipe, reference):
    hybrid = parallel_layout(4, "hybrid", ulysses_degree=2)  # Ulysses pairs, a ring of 2 pairs
    config = GroupConfig(4, device="cpu", parallel=hybrid, collective_timeout_s=30, worker_module=FAULTY_WORKER)
    group = WorkerGroup(recipe, config)
    try:
        assert sorted(group.worker_pids) == [0, 1, 2, 3]
        assert_same_latent(group.sample(tiny_request()), reference)

        seen: list[int] = []
        with pytest.raises(SampleCancelled) as cancelled:
            held = dataclasses.replace(tiny_request(steps=40), seed=HOLD_SEED)  # held after step HOLD_AFTER
            group.sample(held, on_step=lambda s, t: seen.append(s), should_cancel=lambda: HOLD_AFTER in seen)
        assert cancelled.value.step == HOLD_AFTER and group.alive  # all 4 ranks stopped at that boundary

        procs = group_processes(group)
        with pytest.raises(WorkerError) as failed:
            group.sample(dataclasses.replace(tiny_request(), seed=RAISE_SEED))
        assert failed.value.rank == 3 and "injected fault after step 1" in str(failed.value)
        assert_all_gone(procs)
    finally:
        group.close()

    group = WorkerGroup(recipe, config)  # the next prompt: a fresh group
    try:
        assert_same_latent(group.sample(tiny_request()), reference)
        procs = group_processes(group)
        victim = group.worker_pids[2]
        with pytest.raises(WorkerGroupError, match=f"rank 2 \\(pid {victim}"):
            group.sample(tiny_request(steps=40), on_step=lambda s, t: s == 1 and os.kill(victim, signal.SIGKILL))
        assert_all_gone(procs)
    finally:
        group.close()


def test_two_launcher_agents_form_one_group(recipe, reference, monkeypatch):
    secret = new_secret()
    monkeypatch.setenv(SECRET_ENV, secret)  # a multi-machine group takes the secret every machine was given
    config = GroupConfig(
        1,
        device="cpu",
        nnodes=2,
        parallel=parallel_layout(2),  # the all-to-all crosses the two "machines"
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        control_port=free_port(),
        local_addr="127.0.0.1",
        collective_timeout_s=30,
        start_timeout_s=120,
    )
    # the other machine's agent: started by hand there, with the secret in its environment
    other = subprocess.Popen(
        agent_command(config, config.rdzv_endpoint),
        env=agent_environment(config, f"127.0.0.1:{config.control_port}", secret),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with WorkerGroup(recipe, config) as group:
            assert sorted(group.worker_pids) == [0, 1]
            local = {p.pid for p in group_processes(group)}
            assert len(set(group.worker_pids.values()) - local) == 1  # one rank runs under the other agent
            assert_same_latent(group.sample(tiny_request()), reference)
            assert_same_latent(group.sample(tiny_request()), reference)
        # closing the group ends the other machine's agent too: its rank was told to shut down
        output = other.communicate(timeout=60)[0].decode(errors="replace")
        assert other.returncode == 0, output
    finally:
        if other.poll() is None:
            os.killpg(other.pid, signal.SIGKILL)
            other.wait()
