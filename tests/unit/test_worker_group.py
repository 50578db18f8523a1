"""The worker group on CPU (gloo, 2 processes): reuse across prompts, rebuild on a new recipe, cancel, and
failures (a rank raising, a rank killed with SIGKILL, a rank that cannot build the engine) that end the run with a
clear error, leave no process and no file behind, and let the next prompt start a fresh group. Hung and stopped
ranks: test_group_liveness.py; what the group exposes: test_group_isolation.py.

One group serves the tests in turn (process start-up is the cost); a failure test leaves it down and the next
prompt starts another, through the sampler node's own cache (``dax_core.runtime.engine_cache``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from dax_core.runtime.distributed import parallel_layout
from dax_core.runtime.engine import WanEngine
from dax_core.runtime.group import GroupConfig, SampleCancelled, WorkerError, WorkerGroup, WorkerGroupError
from dax_core.runtime.progress import StepProgress
from tests.unit.faulty_worker import FAIL_BUILD_ENV, HOLD_AFTER, HOLD_SEED, RAISE_SEED
from tests.unit.faulty_worker import MODULE as FAULTY_WORKER
from tests.unit.group_helpers import (
    assert_all_gone,
    assert_no_leftovers,
    assert_same_latent,
    cached_groups,
    group_processes,
    in_process,
    next_prompt_starts_a_fresh_group,
    tiny_recipe,
    tiny_request,
)

WORLD = 2
# Ulysses over the 2 ranks: the failure tests then break collectives inside the forward too
CONFIG = GroupConfig(
    WORLD, device="cpu", parallel=parallel_layout(WORLD), collective_timeout_s=60.0, worker_module=FAULTY_WORKER
)


@pytest.fixture(scope="module")
def groups(tmp):
    yield from cached_groups(CONFIG, tmp)


def test_group_gives_the_in_process_result_and_is_reused_across_prompts(groups, recipe, reference):
    group = groups.get(recipe)
    pids = group.worker_pids
    assert sorted(pids) == [0, 1]
    progress: list[tuple[int, int]] = []
    first = group.sample(tiny_request(), on_step=lambda s, t: progress.append((s, t)))
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert "sequence parallel on rank 1: 2 GPUs: ulysses=2" in group.launcher_log()  # the tokens were split
    assert_same_latent(first, reference)
    again = groups.get(type(recipe).from_dict(recipe.to_dict()))  # an equal recipe: the same group
    assert again is group and again.worker_pids == pids
    assert_same_latent(again.sample(tiny_request()), reference)
    assert len(groups.started) == 1


def test_rank_0_reports_every_step_with_its_preview_as_one_process_does(groups, recipe):
    group = groups.get(recipe)
    here: list[StepProgress] = []
    expected = WanEngine.build(recipe, "cpu").sample(tiny_request(), on_progress=here.append, preview=True)
    seen: list[StepProgress] = []
    got = group.sample(tiny_request(), on_progress=seen.append, previews=True)
    assert [p.step for p in seen] == [1, 2, 3, 4] and {p.total for p in seen} == {4}
    assert got.kernels == expected.kernels and got.peak_memory_bytes == ()  # CPU ranks: no GPU memory to report
    for ours, theirs in zip(seen, here, strict=True):
        # sent in float16 (a relative rounding of at most 2**-11, plus half the subnormal spacing); the split
        # forward adds float32 rounding of ~1e-6 (assert_same_latent)
        torch.testing.assert_close(ours.preview, theirs.preview, rtol=2**-11 + 1e-5, atol=1e-5)
        assert ours.first_step_s <= ours.elapsed_s
    plain: list[StepProgress] = []
    group.sample(tiny_request(steps=2), on_progress=plain.append)  # previews are sent only when asked for
    assert [p.step for p in plain] == [1, 2] and all(p.preview is None for p in plain)


def test_control_channel_takes_no_connection_once_every_rank_joined(groups, recipe):
    group = groups.get(recipe)
    host, port = group.control_address.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2).close()
    assert group.sample(tiny_request(steps=1)).steps == 1  # and the group is unharmed


def test_cancel_stops_every_rank_at_the_next_step_boundary_and_keeps_the_group(groups, recipe, reference):
    group = groups.get(recipe)
    pids = group.worker_pids
    seen: list[int] = []
    held = dataclasses.replace(tiny_request(steps=40), seed=HOLD_SEED)  # the ranks hold after step HOLD_AFTER
    with pytest.raises(SampleCancelled) as cancelled:
        group.sample(held, on_step=lambda s, t: seen.append(s), should_cancel=lambda: HOLD_AFTER in seen)
    # the cancel reached the ranks while they stood at that boundary: every rank stopped there, none went on
    assert cancelled.value.step == HOLD_AFTER
    assert set(seen) == {1, HOLD_AFTER}
    assert group.alive and group.worker_pids == pids
    assert_same_latent(group.sample(tiny_request()), reference)


def test_a_request_the_model_cannot_run_is_refused_before_any_rank_sees_it(groups, recipe, reference):
    # checked inside the ranks, each of these would end the whole group and the next prompt would load it again
    group = groups.get(recipe)
    pids = group.worker_pids
    good = tiny_request()
    odd_width = dataclasses.replace(good, latent=torch.zeros(1, 16, 2, 8, 9))
    with pytest.raises(ValueError, match="width 72 is not a multiple of 16: use 64 or 80"):
        group.sample(odd_width)
    wide_text = dataclasses.replace(good, positive=torch.zeros(1, 6, 4096))
    with pytest.raises(ValueError, match=r"the positive text embedding must be \[B, tokens, 32\]"):
        group.sample(wide_text)
    assert group.alive and group.worker_pids == pids
    assert_same_latent(group.sample(good), reference)
    assert groups.get(recipe) is group


class CallerGaveUp(Exception):
    pass


def test_a_raising_progress_callback_stops_the_ranks_and_keeps_the_group(groups, recipe, reference):
    # ComfyUI's progress hook raises on Cancel: the ranks must be stopped and drained, or the next request
    # would read this one's leftover messages
    group = groups.get(recipe)
    pids = group.worker_pids

    def give_up(step: int, total: int) -> None:
        if step == 2:
            raise CallerGaveUp

    with pytest.raises(CallerGaveUp):
        group.sample(tiny_request(steps=40), on_step=give_up)
    assert group.alive and group.worker_pids == pids
    assert_same_latent(group.sample(tiny_request()), reference)


def test_a_rank_raising_fails_the_run_with_its_traceback_then_the_next_prompt_succeeds(groups, recipe, reference):
    group = groups.get(recipe)
    procs = group_processes(group)
    with pytest.raises(WorkerError) as failed:
        group.sample(dataclasses.replace(tiny_request(), seed=RAISE_SEED))
    error = failed.value
    assert error.rank == WORLD - 1 and error.exception == "InjectedFault"
    assert f"rank {WORLD - 1} (pid {group.worker_pids[WORLD - 1]}" in str(error)
    assert "injected fault after step 1" in str(error)
    assert "Traceback" in str(error) and "faulty_worker.py" in error.traceback
    assert not group.alive
    assert_all_gone(procs)
    next_prompt_starts_a_fresh_group(groups, recipe, reference, group)


def test_a_rank_killed_with_sigkill_fails_the_run_then_the_next_prompt_succeeds(groups, recipe, reference):
    group = groups.get(recipe)
    procs = group_processes(group)
    victim = group.worker_pids[1]

    def kill_rank_1(step: int, total: int) -> None:
        if step == 1:
            os.kill(victim, signal.SIGKILL)

    with pytest.raises(WorkerGroupError) as failed:
        group.sample(tiny_request(steps=40), on_step=kill_rank_1)
    assert f"rank 1 (pid {victim}" in str(failed.value)
    assert "crashed or was killed" in str(failed.value)
    assert_all_gone(procs)
    next_prompt_starts_a_fresh_group(groups, recipe, reference, group)


def test_group_is_rebuilt_when_the_recipe_changes(groups, recipe, tmp_path):
    old = groups.get(recipe)
    old_procs = group_processes(old)
    other = tiny_recipe(tmp_path, seed=1)
    new = groups.get(other)
    assert new is not old and not old.alive
    assert_all_gone(old_procs)
    req = tiny_request()
    assert_same_latent(new.sample(req), in_process(other, req))


def test_a_rank_that_cannot_build_the_engine_fails_the_start_with_its_error(tmp, recipe):
    # what a machine without the model file at the recipe's path sees (this machine's file was checked first)
    config = dataclasses.replace(CONFIG, env=((FAIL_BUILD_ENV, "1"),))
    with pytest.raises(WorkerError) as failed:
        WorkerGroup(recipe, config)
    assert "while the ranks were building the engine" in str(failed.value)
    assert f"rank {WORLD - 1} (pid" in str(failed.value) and recipe.weights in str(failed.value)
    assert_no_leftovers(tmp)


def test_a_missing_weights_file_is_refused_before_any_process_starts(tmp_path):
    recipe = tiny_recipe(tmp_path)
    Path(recipe.weights).unlink()
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ValueError, match=re.escape(recipe.weights)):
        WorkerGroup(recipe, CONFIG)
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


OWNER_SCRIPT = """
import json, sys, time
sys.path[:0] = [{repo!r}, {here!r}]
from tests.unit.group_helpers import group_processes, tiny_recipe
from pathlib import Path
from dax_core.runtime.group import GroupConfig, WorkerGroup
group = WorkerGroup(tiny_recipe(Path({folder!r})), GroupConfig(2, device="cpu"))
print(json.dumps([p.pid for p in group_processes(group)]), flush=True)
time.sleep(600)
"""


def test_an_owner_killed_with_sigkill_leaves_no_orphan_and_no_file(tmp_path):
    # ComfyUI itself dies: nobody calls close(), yet every rank notices its control connection closing, removes the
    # group's private folder and exits
    here = Path(__file__).resolve().parent
    script = OWNER_SCRIPT.format(repo=str(here.parents[1]), here=str(here), folder=str(tmp_path))
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = json.loads(owner.stdout.readline())
        procs = [psutil.Process(pid) for pid in pids]
        assert len(procs) == 2
        assert [p.name for p in temp.iterdir()] != []  # the group's folder, while it runs
        owner.kill()
        owner.wait(10)
        assert_all_gone(procs, within_s=20)
        assert_no_leftovers(temp)
    finally:
        owner.kill()
