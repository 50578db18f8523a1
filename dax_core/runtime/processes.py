"""Starting processes in sessions of their own, logging their output, and taking down everything they started.

A one-machine worker group is N rank processes started by the owner (``RankProcesses``); a group spanning machines
is one ``torch.distributed.run`` agent per machine (``LaunchedProcess``), which starts each worker in a session of
its own, so killing the agent's process group does not reach them: teardown walks the process tree (psutil), kills
the workers' process groups first, then the agent's own group.

A process is reaped only at the very end of teardown: until then, having exited or not, it holds its pid and its
process group id, so a signal sent to either can never reach an unrelated process that reused the number.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import psutil

log = logging.getLogger(__name__)


class LaunchedProcess:
    """A subprocess in a new session whose combined output is logged line by line and its tail kept.

    ``stdin_data``: written to the process's stdin, which is then closed (a secret that must not be in its
    environment); None: stdin is /dev/null. ``label`` starts every logged line (e.g. "rank 1| ").
    """

    def __init__(
        self,
        cmd: Sequence[str],
        env: Mapping[str, str],
        log_name: str,
        tail_lines: int = 200,
        stdin_data: bytes | None = None,
        label: str = "",
    ) -> None:
        self.proc = subprocess.Popen(
            list(cmd),
            env=dict(env),
            stdin=subprocess.DEVNULL if stdin_data is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if stdin_data is not None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(stdin_data)
                self.proc.stdin.close()
            except BrokenPipeError:  # it died at once: its exit code and output say why
                pass
        self.label = label
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
            self._log.info("%s%s", self.label, line)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(list(self._tail)[-lines:])

    def lines(self, settle_s: float = 0.0) -> list[str]:
        """The kept lines; ``settle_s``: first wait up to that long for the output to end (an exited process's last
        lines may still be in the pipe)."""
        if settle_s:
            self._pump.join(timeout=settle_s)
        return list(self._tail)

    def poll(self) -> int | None:
        """The exit code once the process has exited (negative: the signal that ended it), without reaping it."""
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
        """Wait up to ``timeout_s`` for the process to exit, without reaping it; its exit code, or None."""
        deadline = time.monotonic() + timeout_s
        while (code := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return code

    def descendants(self) -> list[psutil.Process]:
        """The processes this one started that are still its descendants (none once it has exited: they are
        handed to another parent then, so take this list while it runs)."""
        if self.poll() is not None:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def terminate_tree(self, also: Iterable[psutil.Process] = (), grace_s: float = 5.0) -> None:
        """Kill every process this launch started (plus ``also``), descendants first, then SIGTERM this process's
        group (a launcher agent stops its workers), SIGKILL after ``grace_s``, and reap it."""
        workers = self.kill_descendants(also)
        _, stuck = psutil.wait_procs(workers, timeout=grace_s)
        if self.proc.returncode is None:  # not reaped: its pid and process group id are still ours to signal
            if self.poll() is None:
                _signal_group(self.proc.pid, signal.SIGTERM)
                if self.wait_exit(grace_s) is None:
                    _signal_group(self.proc.pid, signal.SIGKILL)
            _signal_group(self.proc.pid, signal.SIGKILL)  # anything left in its own group
        self.reap(grace_s)
        for p in stuck:
            if _alive(p):
                log.error("process %d (%s) survived SIGKILL", p.pid, _name(p))

    def kill_descendants(self, also: Iterable[psutil.Process] = ()) -> list[psutil.Process]:
        """SIGKILL the process groups of every live descendant (and of ``also``); the processes signalled."""
        tree = {p.pid: p for p in [*self.descendants(), *also]}
        workers = [p for p in tree.values() if _alive(p)]
        for p in workers:
            _kill_group_or_process(p)
        return workers

    def kill(self) -> list[psutil.Process]:
        """SIGKILL this process's group and its descendants' at once, without reaping; the descendants signalled."""
        workers = self.kill_descendants()
        if self.proc.returncode is None:
            _signal_group(self.proc.pid, signal.SIGKILL)
        return workers

    def reap(self, timeout_s: float) -> None:
        """Collect the exit of this process (killed or exited) and close its output."""
        if self.proc.returncode is None:
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.error("process %d did not exit after SIGKILL", self.proc.pid)
        if self.proc.stdout is not None:
            self._pump.join(timeout=timeout_s)
            if not self._pump.is_alive():
                self.proc.stdout.close()


class RankProcesses:
    """The ranks of a one-machine group: one process per rank, each started by the owner in a session of its own,
    with its own environment, and the same bytes on its stdin (the group secret)."""

    def __init__(self, cmd: Sequence[str], envs: Sequence[Mapping[str, str]], stdin_data: bytes, log_name: str) -> None:
        self.ranks: list[LaunchedProcess] = []
        try:
            for rank, env in enumerate(envs):
                self.ranks.append(LaunchedProcess(cmd, env, log_name, stdin_data=stdin_data, label=f"rank {rank}| "))
        except BaseException:
            self.terminate()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.ranks]

    def exited(self) -> tuple[int, int] | None:
        """(rank, exit code) of the first rank found to have exited, or None while all run."""
        for rank, p in enumerate(self.ranks):
            code = p.poll()
            if code is not None:
                return rank, code
        return None

    def wait_exit(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every rank to exit (without reaping); whether they all did."""
        deadline = time.monotonic() + timeout_s
        return all(p.wait_exit(max(0.0, deadline - time.monotonic())) is not None for p in self.ranks)

    def descendants(self) -> list[psutil.Process]:
        return [d for p in self.ranks for d in p.descendants()]

    def tail(self, lines: int = 40) -> str:
        return "\n".join(f"{p.label}{line}" for p in self.ranks for line in p.tail(lines).splitlines())

    def cause(self, rank: int, marker: str) -> str:
        """The line of a rank's output that best says why it ended (see ``last_cause``)."""
        return last_cause(self.ranks[rank].lines(settle_s=1.0), marker)

    def terminate(self, grace_s: float = 5.0) -> None:
        """SIGKILL every rank and whatever it started (all at once), then reap them."""
        signalled = [d for p in self.ranks for d in p.kill()]
        _, stuck = psutil.wait_procs(signalled, timeout=grace_s)
        for p in self.ranks:
            p.reap(grace_s)
        for p in stuck:
            if _alive(p):
                log.error("process %d (%s) survived SIGKILL", p.pid, _name(p))


_EXCEPTION_LINE = re.compile(r"\b[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Fault)\b")


def last_cause(lines: Sequence[str], marker: str) -> str:
    """The most telling line of a process's output: the last one with ``marker``, else the last exception line,
    else the last non-empty line."""
    for pick in (lambda line: marker in line, lambda line: _EXCEPTION_LINE.search(line) is not None, bool):
        found = [line.strip() for line in lines if pick(line.strip())]
        if found:
            return found[-1]
    return ""


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
