"""One rank of a worker group: ``python -m dax_core.runtime.worker``, started by the group's owner (one machine) or
by a ``torch.distributed.run`` agent (a group spanning machines).

A rank's life:

1. read the group secret (a line on stdin from the owner, or ``$DAX_GROUP_SECRET`` under an agent), connect to the
   owner's control channel (``$DAX_CONTROL_ADDRESS``) and authenticate; the owner answers with the setup: the recipe
   as a dict, the parallel layout, the device kind, the collective timeout and the heartbeat interval;
2. join the process group (NCCL on GPUs, gloo on CPU; the rendezvous is the owner's private ``FileStore`` or the
   agent's), plus a small gloo group of its own for stop votes; build the engine from the recipe, enable sequence
   parallelism, report ready. From the setup on, a thread sends a heartbeat (phase, step, block) while the rank
   works, so the owner can tell a rank that waits in a long collective from one that is stopped;
3. serve requests until told to shut down. Every rank receives the same request and runs the same sampling
   loop; rank 0 reports progress after each step and returns the latent. After every transformer block and every
   step the ranks agree whether to stop (a cancel reached any of them) with one all_reduce of a CPU flag on the
   gloo vote group, which adds no GPU synchronisation: all stop at the same point, so their collectives stay
   matched and the group stays ready for the next request. A "rebuild" message carries a new recipe: the rank takes
   it on its engine (other LoRAs merge again in place) or builds its engine again, in the same process group, and
   reports ready;
4. an exception is reported with this rank's traceback, then the rank exits (its peers may be blocked in a
   collective; the owner tears the group down). If the control channel drops, the owner is gone: remove the
   owner's rendezvous folder and exit at once.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import queue
import shutil
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from .. import accelerations  # noqa: F401  (registers every lever's config: Recipe.from_dict needs them)
from ..recipe import Recipe
from .control import ADDRESS_ENV, JOIN_FAILED, SECRET_ENV, AuthenticationError, Channel, connect, parse_address
from .distributed import ParallelConfig, RankEnv, build_engine, init_process_group, parallel_from_dict
from .engine import BlockCallback, SampleRequest, SampleResult, StepCallback
from .launch import STORE_ENV
from .liveness import HEARTBEAT_KIND, Position
from .progress import ProgressCallback, StepProgress
from .sample_messages import progress_fields, request_from_message, result_fields
from .wire import Message, ProtocolError

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_BAD_LAUNCH = 2
EXIT_OWNER_GONE = 3
JOIN_TIMEOUT_S = 60.0
"""How long a rank keeps trying to reach the owner's control channel."""


class SamplingEngine(Protocol):
    def sample(
        self,
        req: SampleRequest,
        on_step: StepCallback | None = None,
        on_block: BlockCallback | None = None,
        on_progress: ProgressCallback | None = None,
        preview: bool = False,
    ) -> SampleResult: ...


EngineBuilder = Callable[[Recipe, torch.device, "ParallelConfig | None", RankEnv], SamplingEngine]


def default_builder(
    recipe: Recipe, device: torch.device, parallel: ParallelConfig | None, env: RankEnv
) -> SamplingEngine:
    return build_engine(recipe, device, parallel)


class Cancelled(Exception):
    """All ranks agreed to stop this request after ``step`` steps."""

    def __init__(self, step: int) -> None:
        super().__init__(f"cancelled after step {step}")
        self.step = step


def report_error(channel: Channel, rank: int, request_id: int | None, exc: BaseException) -> None:
    """Send the owner this rank's exception with its traceback (best effort: the owner may be gone)."""
    log.error("rank %d failed: %s: %s", rank, type(exc).__name__, exc)
    try:
        channel.send(
            "error",
            id=request_id,
            rank=rank,
            time=time.time(),
            exception=type(exc).__name__,
            message=str(exc),
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
    except OSError:
        pass  # the owner is gone; the exit code still tells the launcher


class RankState:
    """What this rank is doing: written by the main thread, read by the heartbeat (one reference, swapped whole)."""

    def __init__(self) -> None:
        self.position = Position()

    def set(self, **changes: Any) -> None:
        self.position = dataclasses.replace(self.position, **changes)


class Heartbeat:
    """Sends the rank's position every ``interval_s`` while it works (not while idle: nobody reads then)."""

    def __init__(self, channel: Channel, state: RankState, interval_s: float) -> None:
        self._channel = channel
        self._state = state
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="dax-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval_s):
            position = self._state.position
            if position.phase == "idle":
                continue
            try:
                self._channel.send(HEARTBEAT_KIND, **dataclasses.asdict(position))
            except OSError:
                return  # the owner is gone: the control reader ends the process

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


class Inbox:
    """Reads the control channel on a thread: cancels are noted at once, everything else is queued in order.

    The reader must never just stop: the main thread would then wait forever for the next message and the owner
    forever for this rank. So any failure on the reader's side ends the process (``exit_process``, replaced only
    by tests), after reporting the exception to the owner where the channel still works.
    """

    def __init__(self, channel: Channel, rank: int, exit_process: Callable[[int], object] = os._exit) -> None:
        self.channel = channel
        self.rank = rank
        self._exit_process = exit_process
        self.messages: queue.Queue[Message] = queue.Queue()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self.closing = False
        self._thread = threading.Thread(target=self._read, name="dax-control-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            self._read_until_closed()
        except Exception as e:
            log.error("rank %d: the control channel reader failed, exiting", self.rank)
            report_error(self.channel, self.rank, None, e)
            self._exit_process(EXIT_FAILED)  # the main thread may be blocked inside a collective

    def _read_until_closed(self) -> None:
        while True:
            try:
                msg = self.channel.recv()
            except (ProtocolError, OSError) as e:
                if self.closing:
                    return
                log.error("rank %d: control channel lost (%s): the group's owner is gone, exiting", self.rank, e)
                self._exit_process(EXIT_OWNER_GONE)
                return
            if msg.kind == "cancel":
                request_id = msg.get("id")
                if not isinstance(request_id, int) or isinstance(request_id, bool):
                    raise ProtocolError(f"a cancel message needs an integer request 'id', got fields {msg.fields}")
                with self._lock:
                    self._cancelled.add(request_id)
            else:
                self.messages.put(msg)

    def cancelled(self, request_id: int) -> bool:
        with self._lock:
            return request_id in self._cancelled

    def forget(self, request_id: int) -> None:
        """Drop cancels of this request and earlier ones (a cancel can arrive just after its request ended)."""
        with self._lock:
            self._cancelled = {i for i in self._cancelled if i > request_id}


class StopVote:
    """One all_reduce(MAX) of a 0/1 CPU flag over a gloo group of its own: every rank learns whether any rank wants
    to stop. On GPUs this never waits for the GPU (the flag is not a CUDA tensor), so it can run after every block."""

    def __init__(self, env: RankEnv, timeout_s: float) -> None:
        self.distributed = env.world_size > 1
        self._flag = torch.zeros(1, dtype=torch.int32)
        timeout = timedelta(seconds=timeout_s)
        self._group = dist.new_group(backend="gloo", timeout=timeout) if self.distributed else None

    def any(self, stop: bool) -> bool:
        if not self.distributed:
            return stop
        self._flag.fill_(int(stop))
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(self._flag.item())


class Worker:
    def __init__(
        self, channel: Channel, env: RankEnv, build: EngineBuilder, exit_process: Callable[[int], object] = os._exit
    ) -> None:
        self.channel = channel
        self.env = env
        self.build = build
        self.state = RankState()
        self._exit_process = exit_process

    def serve(self) -> int:
        setup = self.channel.recv()
        if setup.kind != "setup":
            self._report(None, RuntimeError(f"expected the group setup, got a {setup.kind!r} message"))
            return EXIT_FAILED
        self.state.set(phase="loading")
        heartbeat = Heartbeat(self.channel, self.state, float(setup.get("heartbeat_s", 1.0)))
        try:
            return self._serve(setup)
        finally:
            heartbeat.stop()

    def _serve(self, setup: Message) -> int:
        try:
            device = self.env.device(setup["device"])
            timeout_s = float(setup["collective_timeout_s"])
            if self.env.world_size > 1:
                init_process_group(self.env, device, timeout_s, os.environ.get(STORE_ENV))
            votes = StopVote(self.env, timeout_s)
            recipe, parallel = Recipe.from_dict(setup["recipe"]), parallel_from_dict(setup["parallel"])
            engine = self.build(recipe, device, parallel, self.env)
        except Exception as e:
            self._report(None, e)
            return EXIT_FAILED
        self.state.set(phase="idle")
        self.channel.send("ready", rank=self.env.rank)
        inbox = Inbox(self.channel, self.env.rank, self._exit_process)
        while True:
            msg = inbox.messages.get()
            if msg.kind == "shutdown":
                inbox.closing = True
                self.state.set(phase="stopping")
                break
            if msg.kind == "rebuild":
                self.state.set(phase="loading")
                try:
                    recipe = Recipe.from_dict(msg["recipe"])
                    can_use = getattr(engine, "can_use_loras_of", None)
                    if can_use is not None and can_use(recipe):
                        engine.use_loras_of(recipe)  # type: ignore[attr-defined]
                    else:
                        engine = None  # its memory goes before the new engine's comes
                        _release_memory(device)
                        engine = self.build(recipe, device, parallel, self.env)
                except Exception as e:
                    self._report(None, e)
                    return EXIT_FAILED
                self.state.set(phase="idle")
                self.channel.send("ready", rank=self.env.rank)
                continue
            if msg.kind != "request":
                self._report(msg.get("id"), RuntimeError(f"unexpected {msg.kind!r} message on the control channel"))
                return EXIT_FAILED
            if not self._run(engine, msg, inbox, votes):
                return EXIT_FAILED
        if dist.is_initialized():
            dist.destroy_process_group()
        self.channel.close()
        return 0

    def _run(self, engine: SamplingEngine, msg: Message, inbox: Inbox, votes: StopVote) -> bool:
        request_id = int(msg["id"])
        lead = self.env.rank == 0
        state = self.state
        try:
            req = request_from_message(msg)
        except Exception as e:
            self._report(request_id, e)
            return False
        state.set(phase="sampling", step=0, steps=len(req.run_sigmas()) - 1, forward=0, block=0, blocks=0)

        def on_block(index: int, blocks: int) -> None:
            if index + 1 == blocks:  # a forward is done: the next one starts at block 0
                state.set(forward=state.position.forward + 1, block=0, blocks=blocks)
            else:
                state.set(block=index + 1, blocks=blocks)
            if votes.any(inbox.cancelled(request_id)):
                raise Cancelled(state.position.step)

        def on_progress(p: StepProgress) -> None:  # rank 0 only: before the step's stop vote, as on_step runs after
            fields, tensors = progress_fields(p)
            self.channel.send("progress", tensors, id=request_id, **fields)

        def on_step(i: int, total: int, _x: torch.Tensor) -> None:
            state.set(step=i + 1, steps=total, forward=0, block=0)
            if votes.any(inbox.cancelled(request_id)):
                raise Cancelled(i + 1)

        previews = lead and bool(msg.get("previews", False))  # the owner asks for them when it shows them
        try:
            progress = on_progress if lead else None
            result = engine.sample(req, on_step=on_step, on_block=on_block, on_progress=progress, preview=previews)
        except Cancelled as c:
            inbox.forget(request_id)
            state.set(phase="idle")
            self.channel.send("cancelled", id=request_id, step=c.step)
            return True
        except Exception as e:
            self._report(request_id, e)
            return False
        inbox.forget(request_id)
        state.set(phase="idle")
        if lead:
            fields, tensors = result_fields(result)
            self.channel.send("result", tensors, id=request_id, **fields)
        else:  # the owner reports every GPU's peak memory
            self.channel.send("done", id=request_id, peak_memory_bytes=list(result.peak_memory_bytes))
        return True

    def _report(self, request_id: int | None, exc: BaseException) -> None:
        report_error(self.channel, self.env.rank, request_id, exc)


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def hello(env: RankEnv) -> dict[str, Any]:
    return {
        "rank": env.rank,
        "world_size": env.world_size,
        "local_rank": env.local_rank,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def read_secret() -> str:
    """The group secret: from the environment under a launcher agent (then removed from it), else the first line
    the owner wrote on this process's stdin (never in the environment, so not in /proc/<pid>/environ)."""
    secret = os.environ.pop(SECRET_ENV, "")
    if secret:
        return secret
    return sys.stdin.readline().strip()


def join(address: tuple[str, int], secret: str, env: RankEnv, timeout_s: float = JOIN_TIMEOUT_S) -> Channel:
    """Connect and authenticate, trying again while the owner cannot be reached (not after a refused secret)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return connect(address, secret, hello(env), timeout_s=max(1.0, min(30.0, deadline - time.monotonic())))
        except AuthenticationError:
            raise
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _exit_removing_rendezvous(code: int) -> None:
    """End this process at once; when the owner is gone, remove its rendezvous folder first (nobody else will)."""
    store = os.environ.get(STORE_ENV)
    if code == EXIT_OWNER_GONE and store:
        shutil.rmtree(Path(store).parent, ignore_errors=True)
    logging.shutdown()
    os._exit(code)


def main(build: EngineBuilder = default_builder) -> int:
    env = RankEnv.from_environ()
    fmt = f"%(asctime)s [rank {env.rank}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)
    secret = read_secret()
    address = os.environ.get(ADDRESS_ENV, "")
    if not secret or not address:
        log.error(
            "%s: a worker needs %s (HOST:PORT of the owner's control channel) in its environment and the group "
            "secret (on stdin, or %s under a launcher agent); workers are started by "
            "dax_core.runtime.group.WorkerGroup (or by a torchrun agent joining one)",
            JOIN_FAILED,
            ADDRESS_ENV,
            SECRET_ENV,
        )
        return EXIT_BAD_LAUNCH
    try:
        channel = join(parse_address(address), secret, env)
    except Exception as e:
        log.error("%s: %s: %s", JOIN_FAILED, type(e).__name__, e)
        return EXIT_FAILED
    return Worker(channel, env, build, _exit_removing_rendezvous).serve()


if __name__ == "__main__":
    raise SystemExit(main())
