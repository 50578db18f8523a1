"""A headless ComfyUI in a subprocess on 127.0.0.1, with this pack installed as a custom node.

``ComfyServer`` prepares a private base directory (custom_nodes, models, input, output, temp, user), starts
``main.py`` (``--cpu`` by default) on a free loopback port, waits until it serves, and always stops the whole process
group on exit.
Prompts go through ComfyUI's own HTTP API: ``queue_prompt`` (POST /prompt) and ``wait_for`` (GET /history).
ComfyUI is never imported here.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PACK_NAME = "ComfyUI-DAX"
REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_FOLDERS = ("diffusion_models", "diffusers", "text_encoders", "vae", "loras", "clip_vision")


class ComfyServerError(RuntimeError):
    """The server did not start, died, or did not answer in time. The message ends with the tail of its log."""


class PromptRejected(RuntimeError):
    """POST /prompt answered 400: ComfyUI's validation error and the per-node errors."""

    def __init__(self, error: Mapping[str, Any], node_errors: Mapping[str, Any]) -> None:
        self.error = dict(error)
        self.node_errors = dict(node_errors)
        lines = [f"prompt rejected: {self.error.get('message', self.error)}"]
        if not self.node_errors and self.error.get("details"):
            lines[0] += f": {self.error['details']}"
        for node_id, info in self.node_errors.items():
            reasons = "; ".join(e.get("details") or e.get("message", "") for e in info.get("errors", []))
            lines.append(f"  node {node_id} ({info.get('class_type')}): {reasons}")
        super().__init__("\n".join(lines))


class PromptFailed(RuntimeError):
    """The prompt was accepted but a node raised while it ran (ComfyUI's ``execution_error`` message)."""

    def __init__(self, info: Mapping[str, Any]) -> None:
        self.info = dict(info)
        self.node_id = str(info.get("node_id"))
        self.node_type = str(info.get("node_type"))
        self.exception_type = str(info.get("exception_type"))
        self.exception_message = str(info.get("exception_message", "")).strip()
        super().__init__(
            f"node {self.node_id} ({self.node_type}) failed: {self.exception_type}: {self.exception_message}"
        )


def _die_with_parent() -> None:
    """Run in the child before exec: on Linux, the kernel kills it when the process that started it dies."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def find_comfyui(repo: Path = REPO_ROOT) -> Path | None:
    """A ComfyUI checkout: $COMFYUI_PATH, else the ComfyUI whose custom_nodes holds this pack, else ~/ComfyUI."""
    candidates = [os.environ.get("COMFYUI_PATH")]
    if repo.parent.name == "custom_nodes":
        candidates.append(str(repo.parents[1]))
    candidates.append(str(Path.home() / "ComfyUI"))
    for candidate in candidates:
        if candidate and is_comfyui(Path(candidate)):
            return Path(candidate).resolve()
    return None


def is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir() and (path / "execution.py").is_file()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def link_models(base: Path, models: Mapping[str, Iterable[Path]]) -> None:
    """Symlink files (or diffusers folders) into ``base/models/<folder>`` under their own names."""
    for folder, paths in models.items():
        if folder not in MODEL_FOLDERS:
            raise ValueError(f"unknown model folder {folder!r}; expected one of {MODEL_FOLDERS}")
        target_dir = base / "models" / folder
        target_dir.mkdir(parents=True, exist_ok=True)
        for path in paths:
            path = Path(path).resolve()
            if not path.exists():
                raise FileNotFoundError(f"model {path} does not exist")
            link = target_dir / path.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(path, target_is_directory=path.is_dir())


def link_input(base: Path, path: Path) -> None:
    """Symlink an input file (an image for LoadImage) into ``base/input`` under its own name."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    link = base / "input" / path.name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(path)


class ComfyServer:
    """``with ComfyServer(comfyui, base) as server: server.run(prompt)``; the process group is killed on exit.

    ``cpu``: start ComfyUI with ``--cpu`` (the default; tests and the tiny demo), else on its default device.
    ``env``: variables set for the server on top of this process's environment (e.g. a private TMPDIR).
    ``log_path``: where ComfyUI's output goes (default: ``comfyui.log`` in the base directory).
    """

    def __init__(
        self,
        comfyui: Path,
        base: Path,
        *,
        output_dir: Path | None = None,
        pack: Path | None = REPO_ROOT,
        cpu: bool = True,
        python: str = sys.executable,
        extra_args: Iterable[str] = (),
        start_timeout: float = 180.0,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        if not is_comfyui(Path(comfyui)):
            raise ComfyServerError(f"{comfyui} is not a ComfyUI checkout (no main.py, comfy/ and execution.py)")
        self.comfyui = Path(comfyui).resolve()
        self.base = Path(base).resolve()
        self.output_dir = Path(output_dir).resolve() if output_dir else self.base / "output"
        self.pack = pack
        self.cpu = cpu
        self.python = python
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.env = dict(env or {})
        self.log_path = Path(log_path).resolve() if log_path else self.base / "comfyui.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id (it leads a process group of its own)."""
        if self._proc is None:
            raise ComfyServerError("ComfyUI is not running")
        return self._proc.pid

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def __enter__(self) -> ComfyServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._prepare_base()
        for _attempt in range(3):  # a free port can be taken between free_port() and the server's bind
            self.port = free_port()
            self._spawn()
            try:
                self._wait_until_serving()
                log.info("ComfyUI serving at %s (base %s, log %s)", self.url, self.base, self.log_path)
                return
            except ComfyServerError:
                self.stop()
                if "address already in use" not in self.log_text().lower():
                    raise
        raise ComfyServerError(f"no free port for ComfyUI after 3 tries\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server and everything it started (its process group): SIGTERM, then SIGKILL after 10 s."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        if hasattr(os, "killpg"):  # children the server left behind
            self._signal(proc, signal.SIGKILL)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        try:
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):  # the group is gone already
            pass

    def _prepare_base(self) -> None:
        for sub in ("custom_nodes", "input", "temp", "user", *(f"models/{f}" for f in MODEL_FOLDERS)):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.pack is not None:
            link = self.base / "custom_nodes" / PACK_NAME
            if not link.exists():
                link.symlink_to(Path(self.pack).resolve(), target_is_directory=True)

    def _command(self) -> list[str]:
        cmd = [self.python, "main.py", "--listen", HOST, "--port", str(self.port)]
        cmd += ["--cpu"] if self.cpu else []
        cmd += ["--base-directory", str(self.base), "--output-directory", str(self.output_dir)]
        cmd += ["--disable-auto-launch"]
        # Recent ComfyUIs keep a database under the ComfyUI folder itself unless told otherwise.
        if "--database-url" in (self.comfyui / "comfy" / "cli_args.py").read_text(encoding="utf-8"):
            cmd += ["--database-url", "sqlite:///" + (self.base / "user" / "comfyui.db").as_posix()]
        return cmd + self.extra_args

    def _spawn(self) -> None:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                self._command(),
                cwd=self.comfyui,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so stop() reaches every child
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # no orphan if we are killed
            )

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                self._http("GET", "/system_stats", timeout=2.0)
                return
            except OSError:  # not listening yet (URLError, ConnectionError and timeouts are OSErrors)
                time.sleep(0.25)
        raise ComfyServerError(f"ComfyUI did not serve {self.url} within {self.start_timeout:.0f} s\n{self.log_tail()}")

    def _check_alive(self) -> None:
        if self._proc is None:
            raise ComfyServerError("ComfyUI is not running")
        code = self._proc.poll()
        if code is not None:
            raise ComfyServerError(f"ComfyUI exited with code {code}\n{self.log_tail()}")

    # -- log -----------------------------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)

    # -- API -----------------------------------------------------------------------------------------------------

    def _http(self, method: str, route: str, body: Any = None, timeout: float = 30.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + route, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def _request(self, method: str, route: str, body: Any = None, timeout: float = 30.0) -> Any:
        """``_http`` on the running server; HTTP error statuses raise HTTPError, lost connections ComfyServerError."""
        self._check_alive()
        try:
            return self._http(method, route, body, timeout)
        except urllib.error.HTTPError:
            raise
        except OSError as e:
            self._check_alive()  # a dead server says so, with its log
            raise ComfyServerError(f"{method} {route} at {self.url}: {e}\n{self.log_tail()}") from e

    def interrupt(self) -> None:
        """ComfyUI's Cancel button: POST /interrupt stops the prompt that is running."""
        self._request("POST", "/interrupt", {})

    def object_info(self) -> dict[str, Any]:
        return self._request("GET", "/object_info", timeout=60.0)

    def queue_prompt(self, prompt: Mapping[str, Any], client_id: str = "dax") -> str:
        """Queue an API-format prompt; returns its id. Raises ``PromptRejected`` when validation fails."""
        try:
            reply = self._request("POST", "/prompt", {"prompt": prompt, "client_id": client_id}, timeout=60.0)
        except urllib.error.HTTPError as e:
            if e.code != 400:
                raise ComfyServerError(f"POST /prompt: HTTP {e.code}\n{self.log_tail()}") from e
            reply = json.loads(e.read() or b"{}")
            raise PromptRejected(reply.get("error", {}), reply.get("node_errors", {})) from None
        return str(reply["prompt_id"])

    def history(self) -> dict[str, Any]:
        """GET /history: prompt id -> what ComfyUI kept of every prompt it finished (status, outputs)."""
        return self._request("GET", "/history", timeout=30.0) or {}

    def wait_for(self, prompt_id: str, timeout: float = 600.0, poll: float = 0.25) -> dict[str, Any]:
        """Wait until the prompt finished; returns its outputs (node id -> UI output). Raises ``PromptFailed``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self._request("GET", f"/history/{prompt_id}", timeout=30.0).get(prompt_id)
            if entry is not None:
                status = entry.get("status", {})
                for kind, info in status.get("messages", []):
                    if kind == "execution_error":
                        raise PromptFailed(info)
                    if kind == "execution_interrupted":
                        raise PromptFailed({**info, "exception_type": "Interrupted", "exception_message": "cancelled"})
                if status.get("status_str") == "error":
                    raise PromptFailed({"exception_message": f"ComfyUI reports status {status}"})
                return dict(entry.get("outputs", {}))
            time.sleep(poll)
        raise ComfyServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n{self.log_tail()}")

    def run(self, prompt: Mapping[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        return self.wait_for(self.queue_prompt(prompt), timeout=timeout)

    def output_files(self, outputs: Mapping[str, Any]) -> list[Path]:
        """Files that output nodes report saving in the output folder (images, gifs, videos...)."""
        files = []
        for ui in outputs.values():
            for items in ui.values():
                if not isinstance(items, list):
                    continue
                for item in items:
                    if isinstance(item, dict) and item.get("type") == "output" and "filename" in item:
                        files.append(self.output_dir / item.get("subfolder", "") / item["filename"])
        return files
