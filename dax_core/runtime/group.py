"""A worker group: N processes, started by PyTorch's launcher, that hold one engine and sample on request.

The owner (ComfyUI's process, or any Python program) starts ``torch.distributed.run`` as a subprocess in a session
of its own, with ``--max-restarts 0`` and a c10d rendezvous; the launcher starts the ranks
(``dax_core.runtime.worker``), which connect back to the owner's control channel, authenticate with the group's
secret (passed in the environment) and build the engine from the recipe. The group then serves any number of
prompts until ``close()``, and takes a new recipe in the same processes (``use_recipe``: new LoRAs merge into the
built engines).

Failure model: a rank that raises reports its traceback and exits; a rank that dies drops its connection; a rank
that hangs makes its peers' collectives time out (``collective_timeout_s``) so they raise. Any of these ends the
run with a ``WorkerGroupError`` naming the rank, and tears the whole group down (every process of the launch is
killed, so GPU memory returns to the driver): a group is never reused after a failure. A cancel is not a failure:
the ranks stop together at the next step boundary and the group stays up. Neither is a request the model cannot run:
``sample`` refuses it (``check_request``) before any rank sees it.

A group may span machines (``nnodes`` > 1): the owner's launcher is one agent of the rendezvous, the other machines
each start one with ``agent_command`` (the same recipe file must exist at the same path on every machine).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..lora.merge import recipe_deltas
from ..models.loading import inspect_weights
from ..recipe import Recipe
from .control import ADDRESS_ENV, SECRET_ENV, Channel, ControlServer, new_secret
from .distributed import DEVICE_KINDS, ParallelConfig, check_recipe_layout, parallel_to_dict
from .engine import SampleRequest, SampleResult, check_request
from .failures import RankEvent, explain, primary_event
from .processes import LaunchedProcess
from .sample_messages import request_fields, result_from_message
from .wire import Message, ProtocolError

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding dax_core, put on the workers' PYTHONPATH
WORKER_MODULE = "dax_core.runtime.worker"
ABANDON_GRACE_S = 30.0
"""After a cancel, how long past the collective timeout the ranks may take to stop before the group is taken down."""
ProgressCallback = Callable[[int, int], None]
"""Called with (steps done, total steps) after every step."""


class WorkerGroupError(RuntimeError):
    """The group failed (a rank raised, died or hung) and was torn down; the next group starts fresh."""


class StartCancelled(Exception):
    """The caller cancelled while the group was starting; everything started was taken down."""


class WorkerError(WorkerGroupError):
    """A rank raised an exception; the message carries that rank's traceback."""

    def __init__(self, message: str, rank: int, exception: str, traceback: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.exception = exception
        self.traceback = traceback


class SampleCancelled(Exception):
    """Every rank stopped at the same step boundary after a cancel; the group is still usable."""

    def __init__(self, step: int) -> None:
        super().__init__(f"sampling cancelled after step {step}")
        self.step = step


@dataclass(frozen=True)
class GroupConfig:
    """Where and how a group runs. Two groups with equal configs (and recipes) are interchangeable."""

    nproc_per_node: int
    device: str = "cuda"  # "cuda": one GPU per process, NCCL; "cpu": gloo (for tests and CPU-only machines)
    parallel: ParallelConfig | None = None
    cuda_devices: tuple[int, ...] | None = None  # CUDA_VISIBLE_DEVICES of the workers; None inherits the owner's
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous; None: 127.0.0.1 and a free port
    rdzv_id: str = "dax-worker-group"  # every agent of the group passes the same one
    control_host: str = "127.0.0.1"  # where the control channel listens; another machine's ranks must reach it
    control_port: int = 0  # 0: a free port (a multi-machine group needs a fixed one for the other agents)
    local_addr: str | None = None  # this machine's address for the other ranks; None: 127.0.0.1 on one machine
    collective_timeout_s: float = 600.0
    start_timeout_s: float = 900.0
    worker_module: str = WORKER_MODULE
    env: tuple[tuple[str, str], ...] = field(default=())  # extra environment for the launcher and the workers

    def __post_init__(self) -> None:
        if not isinstance(self.nproc_per_node, int) or self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node must be a positive integer, got {self.nproc_per_node!r}")
        if not isinstance(self.nnodes, int) or self.nnodes < 1:
            raise ValueError(f"nnodes must be a positive integer, got {self.nnodes!r}")
        if self.device not in DEVICE_KINDS:
            raise ValueError(f"device {self.device!r} is not one of {', '.join(DEVICE_KINDS)}")
        if self.cuda_devices is not None and len(self.cuda_devices) < self.nproc_per_node:
            raise ValueError(f"{self.nproc_per_node} processes need as many GPUs, got {list(self.cuda_devices)}")
        if self.parallel is not None and self.parallel.world_size != self.world_size:
            raise ValueError(
                f"the parallel layout is for {self.parallel.world_size} processes but the group has "
                f"{self.nnodes} x {self.nproc_per_node} = {self.world_size}"
            )
        if self.nnodes > 1 and (self.rdzv_endpoint is None or self.control_port == 0):
            raise ValueError(
                "a group spanning machines needs a fixed rendezvous endpoint (rdzv_endpoint=HOST:PORT) and a fixed "
                "control_port, so the agents on the other machines can be started before it"
            )
        for name in ("collective_timeout_s", "start_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


def agent_command(config: GroupConfig, rdzv_endpoint: str, python: str = sys.executable) -> list[str]:
    """The ``torch.distributed.run`` agent of one machine of the group (the same on every machine)."""
    local_addr = config.local_addr or ("127.0.0.1" if config.nnodes == 1 else None)
    cmd = [python, "-m", "torch.distributed.run", "--nnodes", str(config.nnodes)]
    cmd += ["--nproc-per-node", str(config.nproc_per_node), "--rdzv-backend", "c10d"]
    cmd += ["--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", config.rdzv_id, "--max-restarts", "0"]
    cmd += ["--monitor-interval", "0.1"]
    cmd += ["--local-addr", local_addr] if local_addr else []
    return [*cmd, "-m", config.worker_module]


def agent_environment(config: GroupConfig, control_address: str, secret: str) -> dict[str, str]:
    """The environment of a launcher agent: the control address, the secret and the path to dax_core."""
    env = dict(os.environ)
    env.update(config.env)
    env[ADDRESS_ENV] = control_address
    env[SECRET_ENV] = secret
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if config.cuda_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in config.cuda_devices)
    if config.device == "cpu" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // config.nproc_per_node))
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class _Run:
    """One request in flight: the ranks yet to finish it and what they said."""

    request_id: int
    pending: set[int]
    result: SampleResult | None = None
    cancelled_at: int | None = None
    cancel_sent: bool = False
    last_step: int = 0
    """The last step rank 0 reported done."""


@dataclass
class _Rank:
    channel: Channel
    rank: int
    pid: int
    host: str

    def describe(self) -> str:
        return f"rank {self.rank} (pid {self.pid} on {self.host})"


class WorkerGroup:
    """Start a group (blocking until every rank has built the engine), sample with it, ``close()`` it.

    ``secret``: the group secret, hex; a one-machine group makes a fresh one, a multi-machine group takes
    ``$DAX_GROUP_SECRET`` (which every agent must be given too).
    """

    def __init__(
        self,
        recipe: Recipe,
        config: GroupConfig,
        secret: str | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> None:
        """``should_cancel`` is asked while the ranks connect and build the engine: once it answers True the start
        stops, everything started is taken down, and ``StartCancelled`` is raised."""
        check_recipe_layout(recipe, config.parallel)  # before any process starts and loads the weights
        recipe_deltas(recipe)  # and its LoRA files, which every rank would refuse alike
        self.recipe = recipe
        self.config = config
        self._secret = secret or self._default_secret(config)
        self._should_cancel = should_cancel
        self._ranks: dict[int, _Rank] = {}
        self._next_id = 0
        self._failed: str | None = None
        self._closed = False
        self._tree: list[psutil.Process] = []
        self.run_id = uuid.uuid4().hex[:12]
        self._server = ControlServer(self._secret, config.control_host, config.control_port)
        self._selector = selectors.DefaultSelector()
        host, port = self._server.address
        self.control_address = f"{host}:{port}"
        started = time.monotonic()
        try:
            self.rdzv_endpoint = config.rdzv_endpoint or f"127.0.0.1:{free_port()}"
            self._launcher = LaunchedProcess(
                agent_command(config, self.rdzv_endpoint),
                agent_environment(config, self.control_address, self._secret),
                log_name="dax_core.workers",
            )
        except BaseException:
            self._selector.close()
            self._server.close()
            raise
        try:
            self._connect_ranks(started + config.start_timeout_s)
            # the ranks' processes, taken while the launcher runs: if it dies from here on, they are still found
            self._tree = self._launcher.descendants()
            self._setup()
            # the ranks built the model from these weights (on this machine too): its size, for check_request
            self.spec = inspect_weights(recipe.weights).spec
        except BaseException:
            self._teardown()
            raise
        log.info(
            "worker group %s: %d ranks on %s ready in %.1f s",
            self.run_id,
            config.world_size,
            config.device,
            time.monotonic() - started,
        )

    @staticmethod
    def _default_secret(config: GroupConfig) -> str:
        if config.nnodes == 1:
            return new_secret()
        shared = os.environ.get(SECRET_ENV)
        if not shared:
            raise ValueError(
                f"a group spanning machines needs the same secret on every machine: set {SECRET_ENV} to 64 hex "
                "characters (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`) in the environment "
                "of this process and of every agent"
            )
        return shared

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Started, not closed, not failed, and the launcher still running."""
        return not self._closed and self._failed is None and self._launcher.poll() is None

    @property
    def worker_pids(self) -> dict[int, int]:
        """rank -> pid (on its own machine)."""
        return {r.rank: r.pid for r in self._ranks.values()}

    @property
    def launcher_pid(self) -> int:
        return self._launcher.pid

    # -- start-up ----------------------------------------------------------------------------------------------

    def _connect_ranks(self, deadline: float) -> None:
        world = self.config.world_size
        self._selector.register(self._server, selectors.EVENT_READ)
        while len(self._ranks) < world:
            self._check_launcher("while the ranks were connecting")
            self._check_start_cancelled()
            if time.monotonic() > deadline:
                raise WorkerGroupError(
                    f"only {len(self._ranks)} of {world} ranks connected within {self.config.start_timeout_s:.0f} s"
                    + ("; are the agents on the other machines running?" if self.config.nnodes > 1 else "")
                    + self._log_tail()
                )
            if not self._selector.select(timeout=0.1):
                continue
            channel = self._server.accept()
            if channel is None:
                continue
            peer = channel.peer
            rank = peer.get("rank")
            valid = isinstance(rank, int) and 0 <= rank < world and rank not in self._ranks
            if not valid or peer.get("world_size") != world:
                log.warning(
                    "control channel: dropped a worker claiming rank %r of %r (want 0..%d of %d, once each)",
                    rank,
                    peer.get("world_size"),
                    world - 1,
                    world,
                )
                channel.close()
                continue
            self._ranks[rank] = _Rank(channel, rank, int(peer.get("pid", -1)), str(peer.get("host", "?")))
        self._selector.unregister(self._server)
        self._server.close()  # every rank is here: nobody else may connect
        for r in self._ranks.values():
            self._selector.register(r.channel, selectors.EVENT_READ, r)

    def _setup(self) -> None:
        setup = {
            "recipe": self.recipe.to_dict(),
            "parallel": parallel_to_dict(self.config.parallel),
            "device": self.config.device,
            "collective_timeout_s": self.config.collective_timeout_s,
        }
        for r in self._ranks.values():
            r.channel.send("setup", **setup)
        self._await_ready("while the ranks were building the engine", self._check_start_cancelled)

    def _await_ready(self, doing: str, check: Callable[[], None] | None = None) -> None:
        """Until every rank said "ready"; anything else from a rank fails the group."""
        waiting = set(self._ranks)
        while waiting:
            if check is not None:
                check()
            for r, msg in self._receive(0.1, doing):
                if msg.kind == "ready":
                    waiting.discard(r.rank)
                else:
                    self._fail_with(r, msg, doing)

    def _check_start_cancelled(self) -> None:
        if self._should_cancel is not None and self._should_cancel():
            raise StartCancelled(f"worker group {self.run_id}: start cancelled; nothing of it is left running")

    def use_recipe(self, recipe: Recipe) -> None:
        """Serve ``recipe`` from now on, in the same processes: every rank takes it on its built engine (other LoRAs
        are merged again in place: ``WanEngine.use_loras_of``) or builds its engine again from it. A rank that fails
        fails the group, as at start-up."""
        if not self.alive:
            state = "down after a failure" if self._failed else "closed"
            raise WorkerGroupError(f"worker group {self.run_id} is {state}: start a new one")
        if recipe == self.recipe:
            return
        check_recipe_layout(recipe, self.config.parallel)
        spec = inspect_weights(recipe.weights).spec
        recipe_deltas(recipe, spec)  # LoRA files every rank would refuse alike (headers and fingerprints only)
        for r in self._ranks.values():
            r.channel.send("rebuild", recipe=recipe.to_dict())
        self._await_ready("while the ranks were taking a new recipe")
        self.recipe, self.spec = recipe, spec
        log.info("worker group %s: every rank took the new recipe %s", self.run_id, recipe.fingerprint())

    # -- sampling ----------------------------------------------------------------------------------------------

    def sample(
        self,
        req: SampleRequest,
        on_step: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> SampleResult:
        """Run one request on every rank; raises ``SampleCancelled`` or ``WorkerGroupError``, or ValueError for a
        request the model cannot run, which is checked here: inside the ranks it would end the group.

        If ``on_step`` or ``should_cancel`` raises (ComfyUI's progress hook raises on Cancel), the ranks are
        cancelled and waited for before the exception goes on, so the group is ready for the next request.
        """
        if not self.alive:
            state = "down after a failure" if self._failed else "closed"
            raise WorkerGroupError(f"worker group {self.run_id} is {state}: start a new one")
        check_request(req, self.spec, self.config.parallel)
        self._next_id += 1
        run = _Run(self._next_id, set(self._ranks))
        fields, tensors = request_fields(req)
        for r in self._ranks.values():
            try:
                r.channel.send("request", tensors, id=run.request_id, **fields)
            except OSError:
                self._selector.unregister(r.channel)
                self._fail(RankEvent(r.rank, r.describe(), "drop", time.time()), "while sending the request")
        try:
            while run.pending:
                self._follow(run, on_step)
                if not run.cancel_sent and should_cancel is not None and should_cancel():
                    self._cancel(run)
        except WorkerGroupError:
            raise
        except BaseException:
            self._abandon(run)
            raise
        if run.cancelled_at is not None:
            log.info("worker group %s: request %d cancelled after step %d of %d", self.run_id, run.request_id,
                     run.cancelled_at, req.steps)  # fmt: skip
            raise SampleCancelled(run.cancelled_at)
        if run.result is None:
            raise WorkerGroupError("rank 0 finished without a result")  # a protocol bug, not a user error
        return run.result

    def _follow(self, run: _Run, on_step: ProgressCallback | None) -> None:
        """Take in what the ranks sent, then report the progress in it: every message of the batch is accounted
        for before ``on_step`` runs, so a callback that raises loses nothing (``_abandon`` then knows every rank
        that has finished)."""
        doing = "while sampling"
        progress: list[tuple[int, int]] = []
        for r, msg in self._receive(0.05, doing):
            if msg.kind == "error" or msg.get("id") != run.request_id:
                self._fail_with(r, msg, doing)
            elif msg.kind == "progress":
                run.last_step = int(msg["step"])
                progress.append((int(msg["step"]), int(msg["total"])))
            elif msg.kind == "result":
                run.result = result_from_message(msg)
                run.pending.discard(r.rank)
            elif msg.kind == "done":
                run.pending.discard(r.rank)
            elif msg.kind == "cancelled":
                run.cancelled_at = int(msg["step"])
                run.pending.discard(r.rank)
            else:
                self._fail_with(r, msg, doing)
        if on_step is not None:
            for step, total in progress:
                on_step(step, total)

    def _cancel(self, run: _Run) -> None:
        run.cancel_sent = True
        for r in self._ranks.values():
            r.channel.send("cancel", id=run.request_id)

    def _abandon(self, run: _Run) -> None:
        """The caller gave up on ``run``: stop the ranks and wait until each has finished with it. Ranks stop at a
        step boundary; one that never gets there (hung) makes the others' collectives time out, and one that
        still has not answered a while after that takes the group down, so this never waits for ever."""
        if not self.alive or not run.pending:
            return
        deadline = time.monotonic() + self.config.collective_timeout_s + ABANDON_GRACE_S
        try:
            if not run.cancel_sent:
                self._cancel(run)
            while run.pending:
                if time.monotonic() > deadline:
                    ranks = ", ".join(self._ranks[i].describe() for i in sorted(run.pending))
                    self._failed = f"{ranks} did not stop after a cancel"
                    self._teardown()
                    raise WorkerGroupError(f"worker group {self.run_id} taken down: {self._failed}")
                self._follow(run, None)
            log.info("worker group %s: request %d stopped after step %d (the caller gave up)", self.run_id,
                     run.request_id, run.cancelled_at if run.cancelled_at is not None else run.last_step)  # fmt: skip
        except (WorkerGroupError, OSError) as e:
            log.warning("worker group %s failed while stopping an abandoned request: %s", self.run_id, e)

    def _receive(self, timeout: float, doing: str) -> list[tuple[_Rank, Message]]:
        """Messages that arrived within ``timeout``; a dropped connection or a dead launcher fails the group."""
        out = []
        for key, _ in self._selector.select(timeout=timeout):
            r: _Rank = key.data
            try:
                out.append((r, r.channel.recv()))
            except (ProtocolError, OSError):
                self._selector.unregister(r.channel)
                self._fail(RankEvent(r.rank, r.describe(), "drop", time.time()), doing)
        if not out:
            self._check_launcher(doing)
        return out

    def _check_launcher(self, doing: str) -> None:
        code = self._launcher.poll()
        if code is not None:
            self._failed = f"the launcher exited with code {code}"
            self._teardown()
            raise WorkerGroupError(f"worker group failed {doing}: {self._failed}{self._log_tail()}")

    # -- failure -----------------------------------------------------------------------------------------------

    def _fail_with(self, r: _Rank, msg: Message, doing: str) -> None:
        if msg.kind == "error":
            self._fail(self._error_event(r, msg), doing)
        self._failed = f"{r.describe()} sent an unexpected {msg.kind!r} message (id {msg.get('id')})"
        self._teardown()
        raise WorkerGroupError(f"worker group failed: {self._failed}")  # a protocol bug, not a user error

    @staticmethod
    def _error_event(r: _Rank, msg: Message) -> RankEvent:
        return RankEvent(
            r.rank,
            r.describe(),
            "error",
            float(msg.get("time", time.time())),
            str(msg.get("exception", "an exception")),
            str(msg.get("message", "")),
            str(msg.get("traceback", "")),
        )

    def _fail(self, first: RankEvent, doing: str) -> None:
        """Hear the other ranks out for a moment (to tell the cause from its consequences), tear down, raise."""
        events = [first]
        heard = {first.rank}
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and len(heard) < len(self._ranks) and self._selector.get_map():
            for key, _ in self._selector.select(timeout=0.1):
                r: _Rank = key.data
                try:
                    msg = r.channel.recv()
                except (ProtocolError, OSError):
                    self._selector.unregister(r.channel)
                    if r.rank not in heard:
                        events.append(RankEvent(r.rank, r.describe(), "drop", time.time()))
                        heard.add(r.rank)
                    continue
                if msg.kind == "error" and r.rank not in heard:
                    events.append(self._error_event(r, msg))
                    heard.add(r.rank)
        silent = [r.describe() for r in self._ranks.values() if r.rank not in heard]
        tail = self._log_tail()
        cause = primary_event(events)
        self._failed = cause.describe()
        self._teardown()
        message = explain(events, silent, doing, self.config.collective_timeout_s)
        if cause.kind == "error":
            message += f"\n\nTraceback of rank {cause.rank}:\n{cause.traceback}"
            raise WorkerError(message + tail, cause.rank, cause.exception, cause.traceback)
        raise WorkerGroupError(message + tail)

    def launcher_log(self, lines: int = 200) -> str:
        """The last lines the launcher and the ranks printed (they are also logged as ``dax_core.workers``)."""
        return self._launcher.tail(lines)

    def _log_tail(self) -> str:
        tail = self._launcher.tail(25)
        return f"\n--- launcher log (last lines) ---\n{tail}" if tail else ""

    # -- teardown ----------------------------------------------------------------------------------------------

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask every rank to finish, wait for the launcher, then make sure nothing of the group is left."""
        if self._closed:
            return
        if self.alive:
            for r in self._ranks.values():
                try:
                    r.channel.send("shutdown")
                except OSError:
                    pass
            if self._launcher.wait_exit(timeout_s) is None:
                log.warning("worker group %s still running %.0f s after shutdown: killing it", self.run_id, timeout_s)
        self._teardown()
        log.info("worker group %s closed", self.run_id)

    def _teardown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for r in self._ranks.values():
            r.channel.close()
        self._selector.close()
        self._server.close()
        self._launcher.terminate_tree(also=self._tree)

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
