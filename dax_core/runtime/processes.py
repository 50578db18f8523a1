"""Starting the launcher in its own process group and taking down everything it started.

``torch.distributed.run`` starts each worker in a session of its own, so killing the launcher's process group
does not reach the workers: teardown walks the launcher's process tree (psutil), kills the workers' process
groups first (the launcher, still alive, reaps them), then the launcher's own group.

The launcher is reaped only at the very end of teardown: until then, having exited or not, it holds its pid and
its process group id, so a signal sent to either can never reach an unrelated process that reused the number.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import threading
import time
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
        """The launcher's exit code once it has exited (negative: the signal that ended it), without reaping it."""
        if self.proc.returncode is not None or not hasattr(os, "waitid"):
            return self.proc.poll()
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped already
            return self.proc.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def wait_exit(self, timeout_s: float) -> int | None:
        """Wait up to ``timeout_s`` for the launcher to exit, without reaping it; its exit code, or None."""
        deadline = time.monotonic() + timeout_s
        while (code := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return code

    def descendants(self) -> list[psutil.Process]:
        """The processes the launcher started that are still its descendants (none once it has exited: they are
        handed to another parent then, so take this list while the launcher runs)."""
        if self.poll() is not None:
            return []
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
        if self.proc.returncode is None:  # not reaped: its pid and process group id are still ours to signal
            if self.poll() is None:
                _signal_group(self.proc.pid, signal.SIGTERM)
                if self.wait_exit(grace_s) is None:
                    _signal_group(self.proc.pid, signal.SIGKILL)
                    self.wait_exit(grace_s)
            _signal_group(self.proc.pid, signal.SIGKILL)  # anything left in the launcher's own group
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.error("launcher %d did not exit after SIGKILL", self.proc.pid)
        for p in stuck:
            if _alive(p):
                log.error("process %d (%s) survived SIGKILL", p.pid, _name(p))
        if self.proc.stdout is not None:
            self._pump.join(timeout=grace_s)
            if not self._pump.is_alive():
                self.proc.stdout.close()


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
