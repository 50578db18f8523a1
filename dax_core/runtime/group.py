"""A worker group: N processes that hold one engine and sample on request.

The owner (ComfyUI's process, or any Python program) checks the recipe and the layout against the weights file's
header (``dax_core.rules``), then starts the ranks (``dax_core.runtime.launch``: itself on one machine, through
``torch.distributed.run`` agents across machines); the ranks (``dax_core.runtime.worker``) connect back to the
owner's control channel, authenticate with the group's secret and build the engine from the recipe. The group then
serves any number of prompts until ``close()``, and takes a new recipe in the same processes (``use_recipe``: new
LoRAs merge into the built engines).

Failure model: a rank that raises reports its traceback and exits; a rank that dies drops its connection; a rank
that is stopped or frozen stops sending heartbeats, and one that hangs while alive stops making progress
(``dax_core.runtime.liveness``): both are told within the limits of ``GroupConfig.liveness``, long before a
collective's own timeout. Any of these ends the run with a ``WorkerGroupError`` naming the rank and what it was
doing, and tears the whole group down (every process it started is killed, so GPU memory returns to the driver): a
group is never reused after a failure. A cancel is not a failure: the ranks stop together at the next block or step
and the group stays up; only ranks that do not stop within ``Liveness.cancel_s`` make the owner take the group down
(the run still ends as cancelled). Neither is a request the model cannot run: ``sample`` refuses it before any rank
sees it.

A group may span machines (``nnodes`` > 1): the owner's agent is one agent of the c10d rendezvous, the other
machines each start one with ``agent_command`` (the same recipe file must exist at the same path on every machine).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from ..lora.merge import recipe_deltas
from ..recipe import Recipe
from ..rules import check_recipe, check_request
from . import launch
from .control import SECRET_ENV, Channel, ControlServer, new_secret
from .distributed import DEVICE_KINDS, ParallelConfig, parallel_to_dict
from .engine import SampleRequest, SampleResult
from .failures import RankEvent, explain, primary_event
from .launch import agent_command, agent_environment
from .liveness import HEARTBEAT_KIND, Liveness, Watchdog
from .model_info import recipe_spec
from .progress import StepProgress
from .sample_messages import progress_from_message, request_fields, result_from_message
from .wire import Message, ProtocolError

log = logging.getLogger(__name__)

WORKER_MODULE = "dax_core.runtime.worker"
ProgressCallback = Callable[[int, int], None]
"""Called with (steps done, total steps) after every step."""
StepReportCallback = Callable[[StepProgress], None]
"""Called with rank 0's ``StepProgress`` after every step."""

__all__ = [
    "GroupConfig",
    "Liveness",
    "SampleCancelled",
    "StartCancelled",
    "WorkerError",
    "WorkerGroup",
    "WorkerGroupError",
    "agent_command",
    "agent_environment",
    "free_port",
]


class WorkerGroupError(RuntimeError):
    """The group failed (a rank raised, died, stopped or hung) and was torn down; the next group starts fresh."""


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
    """The run was cancelled. ``group_lost``: False when every rank stopped at the same point (the group is still
    usable), True when some did not stop in time and the group was taken down (the next run starts a fresh one)."""

    def __init__(self, step: int, group_lost: bool = False) -> None:
        lost = "; the ranks did not stop in time, so the group was taken down" if group_lost else ""
        super().__init__(f"sampling cancelled after step {step}{lost}")
        self.step = step
        self.group_lost = group_lost


@dataclass(frozen=True)
class GroupConfig:
    """Where and how a group runs. Two groups with equal configs (and recipes) are interchangeable; ``liveness``
    only changes how the owner watches them (a sample may pass its own)."""

    nproc_per_node: int
    device: str = "cuda"  # "cuda": one GPU per process, NCCL; "cpu": gloo (for tests and CPU-only machines)
    parallel: ParallelConfig | None = None
    cuda_devices: tuple[int, ...] | None = None  # CUDA_VISIBLE_DEVICES of the workers; None inherits the owner's
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # nnodes > 1: HOST:PORT of the c10d rendezvous every agent joins
    rdzv_id: str = "dax-worker-group"  # nnodes > 1: every agent of the group passes the same one
    control_host: str = "127.0.0.1"  # where the control channel listens; another machine's ranks must reach it
    control_port: int = 0  # 0: a free port (a multi-machine group needs a fixed one for the other agents)
    local_addr: str | None = None  # nnodes > 1: this machine's address for the other ranks
    collective_timeout_s: float = 600.0  # the last resort: a collective waiting this long raises on its rank
    start_timeout_s: float = 900.0
    liveness: Liveness = field(default_factory=Liveness)
    worker_module: str = WORKER_MODULE
    env: tuple[tuple[str, str], ...] = field(default=())  # extra environment for the workers (and the agent)

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
        if self.nnodes == 1 and self.rdzv_endpoint is not None:
            raise ValueError(
                "rdzv_endpoint is for a group spanning machines (nnodes > 1); a one-machine group meets through a "
                "private file of its owner: leave it None"
            )
        for name in ("collective_timeout_s", "start_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not isinstance(self.liveness, Liveness):
            raise ValueError(f"liveness must be a dax_core.runtime.liveness.Liveness, got {self.liveness!r}")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


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
    cancel_deadline: float | None = None  # monotonic; set when the cancel went out
    last_step: int = 0
    """The last step rank 0 reported done."""
    peak_memory: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """Per rank, the peak GPU memory it reported with its result."""

    @property
    def cancel_sent(self) -> bool:
        return self.cancel_deadline is not None


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
        # before any process starts and loads the weights: what the ranks would refuse, from the file's header
        self.spec = recipe_spec(recipe)
        check_recipe(recipe, self.spec, config.parallel)
        recipe_deltas(recipe, self.spec)  # its LoRA files (headers, fingerprints), which every rank would refuse alike
        self.recipe = recipe
        self.config = config
        self._secret = secret or self._default_secret(config)
        self._should_cancel = should_cancel
        self._ranks: dict[int, _Rank] = {}
        self._next_id = 0
        self._failed: str | None = None
        self._closed = False
        self._watchdog: Watchdog | None = None
        self.run_id = uuid.uuid4().hex[:12]
        self._server = ControlServer(self._secret, config.control_host, config.control_port)
        self._selector = selectors.DefaultSelector()
        host, port = self._server.address
        self.control_address = f"{host}:{port}"
        started = time.monotonic()
        try:
            self._launch = launch.start(config, self.control_address, self._secret)
        except BaseException:
            self._selector.close()
            self._server.close()
            raise
        try:
            self._connect_ranks(started + config.start_timeout_s)
            self._setup(started + config.start_timeout_s)
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
        """Started, not closed, not failed, and every process still running."""
        return not self._closed and self._failed is None and not self._launch.exited()

    @property
    def worker_pids(self) -> dict[int, int]:
        """rank -> pid (on its own machine)."""
        return {r.rank: r.pid for r in self._ranks.values()}

    def processes(self) -> list[psutil.Process]:
        """Every process of the group on this machine, while it is up (ranks, or the agent and its workers)."""
        return self._launch.processes()

    # -- start-up ----------------------------------------------------------------------------------------------

    def _connect_ranks(self, deadline: float) -> None:
        world = self.config.world_size
        doing = "while the ranks were connecting"
        while len(self._ranks) < world:
            self._check_processes(doing)
            self._check_start_cancelled()
            if time.monotonic() > deadline:
                raise WorkerGroupError(
                    f"only {len(self._ranks)} of {world} ranks connected within {self.config.start_timeout_s:.0f} s"
                    + ("; are the agents on the other machines running?" if self.config.nnodes > 1 else "")
                    + self._log_tail()
                )
            channel = self._server.accept(timeout=0.1)
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
        self._server.close()  # every rank is here: nobody else may connect
        if isinstance(self._launch, launch.AgentLaunch):
            self._launch.joined()
        for r in self._ranks.values():
            self._selector.register(r.channel, selectors.EVENT_READ, r)
        names = {r.rank: r.describe() for r in self._ranks.values()}
        self._watchdog = Watchdog(self.config.liveness, names, time.monotonic())

    def _setup(self, deadline: float) -> None:
        setup = {
            "recipe": self.recipe.to_dict(),
            "parallel": parallel_to_dict(self.config.parallel),
            "device": self.config.device,
            "collective_timeout_s": self.config.collective_timeout_s,
            "heartbeat_s": self.config.liveness.heartbeat_s,
        }
        for r in self._ranks.values():
            r.channel.send("setup", **setup)
        self._await_ready("while the ranks were building the engine", deadline, self._check_start_cancelled)

    def _await_ready(self, doing: str, deadline: float, check: Callable[[], None] | None = None) -> None:
        """Until every rank said "ready" (by ``deadline``); anything else from a rank fails the group."""
        waiting = set(self._ranks)
        while waiting:
            if check is not None:
                check()
            if time.monotonic() > deadline:
                ranks = ", ".join(self._ranks[i].describe() for i in sorted(waiting))
                self._take_down(f"{ranks} did not build the engine within {self.config.start_timeout_s:.0f} s", doing)
            for r, msg in self._receive(0.1, doing):
                if msg.kind == "ready":
                    waiting.discard(r.rank)
                else:
                    self._fail_with(r, msg, doing)

    def _check_start_cancelled(self) -> None:
        if self._should_cancel is not None and self._should_cancel():
            raise StartCancelled(f"worker group {self.run_id}: start cancelled; nothing of it is left running")

    # -- sampling ----------------------------------------------------------------------------------------------

    def use_recipe(self, recipe: Recipe) -> None:
        """Serve ``recipe`` from now on, in the same processes: every rank takes it on its built engine (other LoRAs
        are merged again in place: ``WanEngine.use_loras_of``) or builds its engine again from it. The recipe and its
        LoRA files are checked here first; a rank that fails then fails the group, as at start-up."""
        if not self.alive:
            state = "down after a failure" if self._failed else "closed"
            raise WorkerGroupError(f"worker group {self.run_id} is {state}: start a new one")
        if recipe == self.recipe:
            return
        spec = recipe_spec(recipe)
        check_recipe(recipe, spec, self.config.parallel)
        recipe_deltas(recipe, spec)
        for r in self._ranks.values():
            r.channel.send("rebuild", recipe=recipe.to_dict())
        deadline = time.monotonic() + self.config.start_timeout_s
        self._await_ready("while the ranks were taking a new recipe", deadline)
        self.recipe, self.spec = recipe, spec
        log.info("worker group %s: every rank took the new recipe %s", self.run_id, recipe.fingerprint())

    def sample(
        self,
        req: SampleRequest,
        on_step: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        liveness: Liveness | None = None,
        on_progress: StepReportCallback | None = None,
        previews: bool = False,
    ) -> SampleResult:
        """Run one request on every rank; raises ``SampleCancelled`` or ``WorkerGroupError``, or ValueError for a
        request the model cannot run, which is checked here: inside the ranks it would end the group.

        ``liveness``: the limits this run is watched with (default: the config's; the heartbeat interval is the
        one the ranks were started with). If ``on_step`` or ``should_cancel`` raises (ComfyUI's progress hook
        raises on Cancel), the ranks are cancelled and waited for (at most ``cancel_s``, then the group is taken
        down) before the exception goes on, so the group is ready for the next request.

        ``on_progress`` gets rank 0's ``StepProgress`` of every step (after ``on_step``), carrying a preview latent
        when ``previews`` is set. The result's peak memory lists every rank's.
        """
        if not self.alive:
            state = "down after a failure" if self._failed else "closed"
            raise WorkerGroupError(f"worker group {self.run_id} is {state}: start a new one")
        check_request(req, self.spec, self.config.parallel)
        watch = dataclasses.replace(liveness or self.config.liveness, heartbeat_s=self.config.liveness.heartbeat_s)
        self._next_id += 1
        run = _Run(self._next_id, set(self._ranks))
        fields, tensors = request_fields(req)
        fields["previews"] = previews and on_progress is not None
        assert self._watchdog is not None
        self._watchdog.start_run(watch, len(req.run_sigmas()) - 1, time.monotonic())
        try:
            for r in self._ranks.values():
                try:
                    r.channel.send("request", tensors, id=run.request_id, **fields)
                except OSError:
                    self._selector.unregister(r.channel)
                    self._fail(RankEvent(r.rank, r.describe(), "drop", time.time()), "while sending the request")
            return self._wait_for(run, req, on_step, should_cancel, on_progress)
        finally:
            self._watchdog.end_run()

    def _wait_for(
        self,
        run: _Run,
        req: SampleRequest,
        on_step: ProgressCallback | None,
        should_cancel: Callable[[], bool] | None,
        on_progress: StepReportCallback | None = None,
    ) -> SampleResult:
        try:
            while run.pending:
                self._follow(run, on_step, on_progress)
                if not run.cancel_sent and should_cancel is not None and should_cancel():
                    self._cancel(run)
                if run.pending and self._cancel_overdue(run):
                    step = run.cancelled_at if run.cancelled_at is not None else run.last_step
                    self._take_down_after_cancel(run)
                    raise SampleCancelled(step, group_lost=True)
        except (WorkerGroupError, SampleCancelled):
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
        peaks = tuple(b for rank in sorted(run.peak_memory) for b in run.peak_memory[rank])
        return dataclasses.replace(run.result, peak_memory_bytes=peaks)

    def _follow(
        self, run: _Run, on_step: ProgressCallback | None, on_progress: StepReportCallback | None = None
    ) -> None:
        """Take in what the ranks sent, then report the progress in it: every message of the batch is accounted
        for before ``on_step`` runs, so a callback that raises loses nothing (``_abandon`` then knows every rank
        that has finished)."""
        doing = "while sampling"
        progress: list[StepProgress] = []
        for r, msg in self._receive(0.05, doing):
            if msg.kind == "error" or msg.get("id") != run.request_id:
                self._fail_with(r, msg, doing)
            elif msg.kind == "progress":
                run.last_step = int(msg["step"])
                if self._watchdog is not None:
                    self._watchdog.step_done(run.last_step, time.monotonic())
                progress.append(progress_from_message(msg))
            elif msg.kind == "result":
                run.result = result_from_message(msg)
                run.peak_memory[r.rank] = run.result.peak_memory_bytes
                run.pending.discard(r.rank)
            elif msg.kind == "done":
                run.peak_memory[r.rank] = tuple(int(b) for b in msg.get("peak_memory_bytes", ()))
                run.pending.discard(r.rank)
            elif msg.kind == "cancelled":
                run.cancelled_at = int(msg["step"])
                run.pending.discard(r.rank)
            else:
                self._fail_with(r, msg, doing)
        for p in progress:
            if on_step is not None:
                on_step(p.step, p.total)
            if on_progress is not None:
                on_progress(p)

    def _cancel(self, run: _Run) -> None:
        assert self._watchdog is not None
        run.cancel_deadline = time.monotonic() + self._watchdog.liveness.cancel_s
        for r in self._ranks.values():
            try:
                r.channel.send("cancel", id=run.request_id)
            except OSError:
                pass  # a rank that is gone: the deadline takes the group down

    def _cancel_overdue(self, run: _Run) -> bool:
        return run.cancel_deadline is not None and time.monotonic() > run.cancel_deadline

    def _take_down_after_cancel(self, run: _Run) -> None:
        assert self._watchdog is not None
        ranks = ", ".join(self._ranks[i].describe() for i in sorted(run.pending))
        self._failed = f"{ranks} did not stop within {self._watchdog.liveness.cancel_s:g} s of a cancel"
        log.warning("worker group %s taken down: %s", self.run_id, self._failed)
        self._teardown()

    def _abandon(self, run: _Run) -> None:
        """The caller gave up on ``run``: stop the ranks and wait until each has finished with it. Ranks stop at the
        next block or step; ranks that have not within ``cancel_s`` make the owner take the group down, so this
        never waits long."""
        if not self.alive or not run.pending:
            return
        try:
            if not run.cancel_sent:
                self._cancel(run)
            while run.pending:
                if self._cancel_overdue(run):
                    self._take_down_after_cancel(run)
                    return
                self._follow(run, None)
            log.info("worker group %s: request %d stopped after step %d (the caller gave up)", self.run_id,
                     run.request_id, run.cancelled_at if run.cancelled_at is not None else run.last_step)  # fmt: skip
        except (WorkerGroupError, OSError) as e:
            log.warning("worker group %s failed while stopping an abandoned request: %s", self.run_id, e)

    def _receive(self, timeout: float, doing: str) -> list[tuple[_Rank, Message]]:
        """Messages that arrived within ``timeout`` (heartbeats are taken in here, not returned); a dropped
        connection, an exited process, a silent rank or a stalled step fails the group."""
        out = []
        now = time.monotonic()
        for key, _ in self._selector.select(timeout=timeout):
            r: _Rank = key.data
            try:
                msg = r.channel.recv()
            except (ProtocolError, OSError):
                self._selector.unregister(r.channel)
                self._fail(RankEvent(r.rank, r.describe(), "drop", time.time()), doing)
            now = time.monotonic()
            if self._watchdog is not None:
                self._watchdog.heard(r.rank, msg.kind, msg.fields, now)
            if msg.kind != HEARTBEAT_KIND:
                out.append((r, msg))
        if not out:
            self._check_processes(doing)
        if self._watchdog is not None:
            overdue = self._watchdog.overdue(time.monotonic())
            if overdue is not None:
                self._take_down(overdue, doing)
        return out

    def _check_processes(self, doing: str) -> None:
        if self._launch.exited():
            self._take_down(self._launch.exit_reason() or "a process of the group exited", doing)

    # -- failure -----------------------------------------------------------------------------------------------

    def _take_down(self, reason: str, doing: str) -> None:
        """Fail with ``reason`` (whose cause is known: nobody else need be heard), tear down, raise."""
        self._failed = reason
        tail = self._log_tail()
        self._teardown()
        raise WorkerGroupError(f"worker group failed {doing}: {reason}{tail}")

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
        """The last lines the ranks (or the agent) printed (they are also logged as ``dax_core.workers``)."""
        return self._launch.tail(lines)

    def _log_tail(self) -> str:
        tail = self._launch.tail(25)
        return f"\n--- the ranks' output (last lines) ---\n{tail}" if tail else ""

    # -- teardown ----------------------------------------------------------------------------------------------

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask every rank to finish, wait for them to exit, then make sure nothing of the group is left."""
        if self._closed:
            return
        if self.alive:
            for r in self._ranks.values():
                try:
                    r.channel.send("shutdown")
                except OSError:
                    pass
            if not self._launch.wait_exit(timeout_s):
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
        self._launch.take_down()

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
