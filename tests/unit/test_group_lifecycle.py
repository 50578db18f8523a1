"""Worker-group lifecycle edges: a Cancel while the group starts, a progress callback that raises in the middle of
a batch of messages, and a launcher whose exit is seen without reaping it (so its pid and process group cannot be
reused before teardown signals them)."""

from __future__ import annotations

import os
import signal
import sys

import psutil
import pytest

from dax_core.runtime.group import GroupConfig, StartCancelled, WorkerGroup, _Rank, _Run
from dax_core.runtime.processes import LaunchedProcess
from dax_core.runtime.wire import Message
from tests.unit.group_helpers import assert_all_gone, tiny_recipe


def _workers_of_this_process() -> list[psutil.Process]:
    workers = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "dax_core.runtime.worker" in p.cmdline():
                workers.append(p)
        except psutil.Error:  # a short-lived helper process that is already gone
            pass
    return workers


def test_a_cancel_while_the_ranks_start_takes_down_everything_started(tmp_path):
    seen: list[psutil.Process] = []

    def cancel_once_the_ranks_run() -> bool:
        seen.extend(p for p in _workers_of_this_process() if p not in seen)
        return len(seen) >= 2

    with pytest.raises(StartCancelled, match="start cancelled"):
        WorkerGroup(tiny_recipe(tmp_path), GroupConfig(2, device="cpu"), should_cancel=cancel_once_the_ranks_run)
    assert len(seen) >= 2  # the two ranks (and any process they started)
    assert_all_gone(seen)


class _RaisingCallback(Exception):
    pass


def test_a_raising_progress_callback_loses_no_message_of_its_batch():
    # rank 0's progress and rank 1's "done" arrive in one batch; the callback raises on the progress: rank 1 must
    # still count as finished, or stopping the run would wait for a message that already came
    group = object.__new__(WorkerGroup)
    ranks = [_Rank(None, 0, 100, "here"), _Rank(None, 1, 101, "here")]  # type: ignore[arg-type]
    batch = [
        (ranks[0], Message("progress", {"id": 7, "step": 3, "total": 10})),
        (ranks[1], Message("done", {"id": 7})),
    ]
    group._receive = lambda timeout, doing: batch  # type: ignore[method-assign]
    group._watchdog = None
    run = _Run(7, {0, 1})

    def on_step(step: int, total: int) -> None:
        raise _RaisingCallback

    with pytest.raises(_RaisingCallback):
        group._follow(run, on_step)
    assert run.pending == {0}
    assert run.last_step == 3


def test_the_launchers_exit_is_seen_without_reaping_it():
    launched = LaunchedProcess([sys.executable, "-c", "raise SystemExit(3)"], os.environ, log_name="test.launch")
    assert launched.wait_exit(30.0) == 3
    assert launched.poll() == 3
    # not reaped: a zombie still holds the pid (and the process group id), so no other process can take them
    assert psutil.Process(launched.pid).status() == psutil.STATUS_ZOMBIE
    launched.terminate_tree(grace_s=5.0)
    assert launched.proc.returncode == 3  # reaped by the teardown, at its very end
    assert not psutil.pid_exists(launched.pid) or psutil.Process(launched.pid).status() != psutil.STATUS_ZOMBIE


def test_a_launcher_killed_by_a_signal_reports_it_as_a_negative_code():
    launched = LaunchedProcess([sys.executable, "-c", "import time; time.sleep(60)"], os.environ, log_name="t.l")
    assert launched.poll() is None
    os.kill(launched.pid, signal.SIGKILL)
    assert launched.wait_exit(30.0) == -signal.SIGKILL
    launched.terminate_tree(grace_s=5.0)
    assert launched.proc.returncode == -signal.SIGKILL
