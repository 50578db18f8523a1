"""Starting the launcher in its own process group and taking down everything it started.

``torch.distributed.run`` starts each worker in a session of its own, so killing the launcher's process group
does not reach the workers: teardown walks the launcher's process tree (psutil), kills the workers' process
groups first (the launcher, still alive, reaps them), then the launcher's own group.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence

import psutil

log = logging.getLogger(__name__)


class LaunchedProcess:
    """A subprocess in a new session whose combined output is logged line by line and its tail kept."""

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str], log_name: str, tail_lines: int = 200) -> None:
        self.proc = subprocess.Popen(
            list(cmd),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._log = logging.getLogger(log_name)
        self._pump = threading.Thread(target=self._read_output, name=f"{log_name}-output", daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self._tail.append(line)
            self._log.info("%s", line)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def poll(self) -> int | None:
        return self.proc.poll()

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def terminate_tree(self, also: Iterable[psutil.Process] = (), grace_s: float = 5.0) -> None:
        """Kill every process this launch started (plus ``also``), workers first, and reap the launcher."""
        tree = {p.pid: p for p in [*self.descendants(), *also]}
        workers = [p for p in tree.values() if _alive(p)]
        for p in workers:
            _kill_group_or_process(p)
        _, stuck = psutil.wait_procs(workers, timeout=grace_s)
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=grace_s)
        _signal_group(self.proc.pid, signal.SIGKILL)  # anything left in the launcher's own group
        for p in stuck:
            if _alive(p):
                log.error("process %d (%s) survived SIGKILL", p.pid, _name(p))
        if self.proc.stdout is not None:
            self._pump.join(timeout=grace_s)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _name(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()[:4])
    except psutil.Error:
        return "?"


def _kill_group_or_process(p: psutil.Process) -> None:
    """SIGKILL ``p``'s process group if it leads one (a launcher-started worker does), else ``p`` alone."""
    try:
        if os.getpgid(p.pid) == p.pid and p.is_running():
            os.killpg(p.pid, signal.SIGKILL)
        else:
            p.kill()  # psutil checks the pid still names the same process
    except (ProcessLookupError, psutil.NoSuchProcess):
        pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
