"""How a worker group's processes are started, watched and taken down: on one machine by the owner itself, across
machines by one ``torch.distributed.run`` agent per machine.

One machine (``LocalLaunch``): the owner starts the N ranks itself, each in a session of its own, with RANK,
WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE set. Nothing of the group listens beyond loopback and nothing is
writable by another user: the rendezvous is a ``FileStore`` in a fresh 0700 folder of the owner's (no TCP store),
gloo and NCCL's bootstrap are bound to the loopback interface, the control channel listens on 127.0.0.1, and the
group secret reaches each rank on its stdin (not in its environment, which /proc/<pid>/environ shows). The folder
is the ranks' TMPDIR too, and it is removed when the group is taken down (or, if the owner dies, by the ranks as
they exit), so nothing is left behind.

Several machines (``AgentLaunch``): the owner runs its machine's agent with a c10d rendezvous; see
docs/multi_gpu.md for what that exposes (the c10d store listens on the rendezvous endpoint, the secret is in the
agents' environment) and how to keep it on a private network.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from .control import ADDRESS_ENV, JOIN_FAILED, SECRET_ENV
from .processes import LaunchedProcess, RankProcesses, last_cause

if TYPE_CHECKING:
    from .group import GroupConfig

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding dax_core, put on the workers' PYTHONPATH
LOG_NAME = "dax_core.workers"
STORE_ENV = "DAX_STORE_FILE"
"""The one-machine group's rendezvous file (``FileStore``), in a folder only the owner's user can open."""
STORE_FILE = "rendezvous"


def loopback_interface() -> str:
    """The name of the network interface holding 127.0.0.1 ("lo" on Linux, "lo0" on macOS)."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
            return name
    return "lo"


def base_environment(config: GroupConfig) -> dict[str, str]:
    """What every process of the group gets: the owner's environment, the config's extras, the path to dax_core."""
    env = dict(os.environ)
    env.update(config.env)
    env.pop(SECRET_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if config.cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in config.cuda_devices)
    if config.device == "cpu" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // config.nproc_per_node))
    return env


def agent_command(config: GroupConfig, rdzv_endpoint: str, python: str = sys.executable) -> list[str]:
    """The ``torch.distributed.run`` agent of one machine of a group spanning machines (the same on every one)."""
    local_addr = config.local_addr or ("127.0.0.1" if config.nnodes == 1 else None)
    cmd = [python, "-m", "torch.distributed.run", "--nnodes", str(config.nnodes)]
    cmd += ["--nproc-per-node", str(config.nproc_per_node), "--rdzv-backend", "c10d"]
    cmd += ["--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", config.rdzv_id, "--max-restarts", "0"]
    cmd += ["--monitor-interval", "0.1"]
    cmd += ["--local-addr", local_addr] if local_addr else []
    return [*cmd, "-m", config.worker_module]


def agent_environment(config: GroupConfig, control_address: str, secret: str) -> dict[str, str]:
    """The environment of a launcher agent: the control address, the secret and the path to dax_core."""
    env = base_environment(config)
    env[ADDRESS_ENV] = control_address
    env[SECRET_ENV] = secret
    return env


def _inductor_cache_dir() -> str:
    """torch.compile's cache folder as the owner would use it, kept when the ranks' TMPDIR points elsewhere."""
    user = "".join(c if c.isalnum() or c in "-_." else "_" for c in getpass.getuser())
    return os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")


class LocalLaunch:
    """The N ranks of a one-machine group, started by the owner (see the module's docstring)."""

    def __init__(self, config: GroupConfig, control_address: str, secret: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="dax-group-"))  # 0700: only this user can read or write it
        try:
            store = self.folder / STORE_FILE
            loopback = loopback_interface()
            common = base_environment(config)
            common.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_cache_dir())
            common.update({
                ADDRESS_ENV: control_address,
                STORE_ENV: str(store),
                "TMPDIR": str(self.folder),
                "GLOO_SOCKET_IFNAME": loopback,
                "NCCL_SOCKET_IFNAME": loopback,
                "WORLD_SIZE": str(config.world_size),
                "LOCAL_WORLD_SIZE": str(config.nproc_per_node),
                "GROUP_RANK": "0",
            })  # fmt: skip
            for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
                common.pop(name, None)
            envs = [{**common, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(config.world_size)]
            cmd = [sys.executable, "-m", config.worker_module]
            self.ranks = RankProcesses(cmd, envs, (secret + "\n").encode(), LOG_NAME)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def exited(self) -> bool:
        """Whether a rank has exited."""
        return self.ranks.exited() is not None

    def exit_reason(self) -> str | None:
        """Why the group is ending by itself (a rank exited), or None while every rank runs."""
        exited = self.ranks.exited()
        if exited is None:
            return None
        rank, code = exited
        cause = self.ranks.cause(rank, JOIN_FAILED)
        return f"rank {rank} (pid {self.ranks.pids[rank]}) exited with code {code}" + (f": {cause}" if cause else "")

    def wait_exit(self, timeout_s: float) -> bool:
        return self.ranks.wait_exit(timeout_s)

    def tail(self, lines: int) -> str:
        return self.ranks.tail(lines)

    def processes(self) -> list[psutil.Process]:
        return [psutil.Process(pid) for pid in self.ranks.pids if psutil.pid_exists(pid)] + self.ranks.descendants()

    def take_down(self) -> None:
        """Kill every rank and what it started, reap them, remove the group's folder."""
        self.ranks.terminate()
        shutil.rmtree(self.folder, ignore_errors=True)


class AgentLaunch:
    """This machine's ``torch.distributed.run`` agent of a group spanning machines."""

    def __init__(self, config: GroupConfig, control_address: str, secret: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="dax-group-"))  # the agent's TMPDIR (its torchelastic files)
        try:
            env = agent_environment(config, control_address, secret)
            env["TMPDIR"] = str(self.folder)
            env.setdefault("TORCHINDUCTOR_CACHE_DIR", _inductor_cache_dir())
            assert config.rdzv_endpoint is not None  # GroupConfig requires one for nnodes > 1
            self.agent = LaunchedProcess(agent_command(config, config.rdzv_endpoint), env, log_name=LOG_NAME)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self._tree: list[psutil.Process] = []

    def joined(self) -> None:
        """Every rank has connected: note the agent's processes now, while it runs (if it dies from here on, they
        are reparented and no longer its descendants)."""
        self._tree = self.agent.descendants()

    def exited(self) -> bool:
        return self.agent.poll() is not None

    def exit_reason(self) -> str | None:
        """Why the group is ending by itself (the agent exited), or None while it runs."""
        code = self.agent.poll()
        if code is None:
            return None
        cause = last_cause(self.agent.lines(settle_s=1.0), JOIN_FAILED)
        return f"the launcher exited with code {code}" + (f": {cause}" if cause else "")

    def wait_exit(self, timeout_s: float) -> bool:
        return self.agent.wait_exit(timeout_s) is not None

    def tail(self, lines: int) -> str:
        return self.agent.tail(lines)

    def processes(self) -> list[psutil.Process]:
        if self.agent.poll() is not None:
            return []
        return [psutil.Process(self.agent.pid), *self.agent.descendants()]

    def take_down(self) -> None:
        self.agent.terminate_tree(also=self._tree)
        shutil.rmtree(self.folder, ignore_errors=True)


Launch = LocalLaunch | AgentLaunch


def start(config: GroupConfig, control_address: str, secret: str) -> Launch:
    """The group's processes: the owner's own ranks on one machine, this machine's agent across machines."""
    if config.nnodes == 1:
        return LocalLaunch(config, control_address, secret)
    return AgentLaunch(config, control_address, secret)
