"""The control channel between a worker group's owner and its ranks: TCP, mutually authenticated.

The owner listens (on 127.0.0.1 unless the group spans machines); every rank connects. Both sides prove that
they hold the group's secret without sending it: the server sends a random nonce, the client answers with
``HMAC-SHA256(secret, "client" | server nonce | client nonce)`` and its own nonce, the server answers with
``HMAC-SHA256(secret, "server" | client nonce | server nonce)``. A connection that fails this (no secret, a
wrong one, or anything that is not the protocol, or too slow) is refused and closed before any request is read
from it. The secret reaches a one-machine group's ranks on their stdin, those of a group spanning machines through
their agent's environment (``SECRET_ENV``); never on a command line.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import secrets
import socket
import threading
import time
from typing import Any

import torch

from .wire import Message, recv_message, send_message

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
SECRET_ENV = "DAX_GROUP_SECRET"
ADDRESS_ENV = "DAX_CONTROL_ADDRESS"
JOIN_FAILED = "could not join the worker group"
"""How a rank that cannot join says why in its output (the owner quotes that line as the cause of a failed start)."""
_HANDSHAKE_HEADER_LIMIT = 4096  # before authentication a peer may only send a small header and no tensors


class AuthenticationError(ConnectionError):
    """The peer did not prove that it holds the group's secret."""


def new_secret() -> str:
    """A fresh per-group secret, hex encoded (32 random bytes)."""
    return secrets.token_hex(32)


def _secret_bytes(secret: str) -> bytes:
    try:
        raw = bytes.fromhex(secret)
    except ValueError:
        raise ValueError(f"the group secret must be hex encoded (e.g. from `{new_secret.__qualname__}()`)") from None
    if len(raw) < 16:
        raise ValueError("the group secret must be at least 16 bytes (32 hex characters)")
    return raw


def _mac(secret: bytes, role: bytes, first: str, second: str) -> str:
    return hmac.new(secret, role + b"|" + first.encode() + b"|" + second.encode(), hashlib.sha256).hexdigest()


def _mac_matches(got: object, expected: str) -> bool:
    """Constant-time check of a MAC the peer sent; anything but an ASCII string (which ``compare_digest`` would
    raise on) is simply wrong."""
    return isinstance(got, str) and got.isascii() and hmac.compare_digest(got, expected)


class Channel:
    """One authenticated connection. ``send`` is thread-safe; ``recv`` belongs to one reader."""

    def __init__(self, sock: socket.socket, peer: dict[str, Any]) -> None:
        self.sock = sock
        self.peer = peer
        self._send_lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: str, tensors: dict[str, torch.Tensor] | None = None, **fields: Any) -> None:
        with self._send_lock:
            send_message(self.sock, kind, fields, tensors)

    def recv(self) -> Message:
        return recv_message(self.sock)

    def close(self) -> None:
        _shutdown(self.sock)
        self.sock.close()


class ControlServer:
    """Listens for the ranks of one group and authenticates each connection, many at once.

    A thread accepts connections; each one's handshake runs on a thread of its own with an absolute deadline
    (``handshake_timeout_s``), so a stranger's idle or slow connections cannot hold up the group's ranks.
    Authenticated channels wait in a queue for ``accept``.
    """

    def __init__(
        self,
        secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        handshake_timeout_s: float = 10.0,
        max_pending: int = 256,
    ) -> None:
        self._secret = _secret_bytes(secret)
        self._handshake_timeout_s = handshake_timeout_s
        self._max_pending = max_pending
        self._listener = socket.create_server((host, port), backlog=128)
        self._listener.settimeout(0.1)  # the accepting thread looks at its deadlines and at close() this often
        self._joined: queue.Queue[Channel] = queue.Queue()
        self._pending: dict[socket.socket, float] = {}  # handshakes in progress -> their deadline (monotonic)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.refused = 0  # connections refused so far (failed, malformed, too slow or too many handshakes)
        self._acceptor = threading.Thread(target=self._accept_loop, name="dax-control-accept", daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def accept(self, timeout: float | None = None) -> Channel | None:
        """The next authenticated channel, or None if none came within ``timeout`` seconds."""
        try:
            return self._joined.get(timeout=timeout)
        except queue.Empty:
            return None

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            self._expire_handshakes()
            try:
                sock, addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                continue
            with self._lock:
                crowded = len(self._pending) >= self._max_pending
                if not crowded:
                    self._pending[sock] = time.monotonic() + self._handshake_timeout_s
            if crowded:
                self._count_refused(addr, f"{self._max_pending} handshakes already pending")
                sock.close()
                continue
            threading.Thread(target=self._handshake_one, args=(sock, addr), name="dax-control-handshake",
                             daemon=True).start()  # fmt: skip

    def _expire_handshakes(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [sock for sock, deadline in self._pending.items() if now > deadline]
        for sock in late:  # wakes the handshake's blocked read, which then fails and refuses the connection
            _shutdown(sock)

    def _handshake_one(self, sock: socket.socket, addr: Any) -> None:
        sock.settimeout(self._handshake_timeout_s)
        try:
            peer = self._handshake(sock)
        except Exception as e:
            # the peer is not authenticated: whatever it sent must not stop the server from taking the real ranks
            self._count_refused(addr, f"{type(e).__name__}: {e}")
            sock.close()
            return
        finally:
            with self._lock:
                self._pending.pop(sock, None)
        if self._closed.is_set():
            sock.close()
            return
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._joined.put(Channel(sock, peer))

    def _count_refused(self, addr: Any, why: str) -> None:
        with self._lock:
            self.refused += 1
        log.warning("control channel: refused a connection from %s:%s: %s", addr[0], addr[1], why)

    def _handshake(self, sock: socket.socket) -> dict[str, Any]:
        server_nonce = secrets.token_hex(16)
        send_message(sock, "challenge", {"nonce": server_nonce, "protocol": PROTOCOL_VERSION})
        answer = recv_message(sock, max_header=_HANDSHAKE_HEADER_LIMIT, max_payload=0)
        client_nonce, mac, hello = answer.get("nonce"), answer.get("mac"), answer.get("hello")
        if answer.kind != "auth" or not isinstance(client_nonce, str):
            self._refuse(sock)
            raise AuthenticationError(f"expected an authentication answer, got a {answer.kind!r} message")
        if not _mac_matches(mac, _mac(self._secret, b"client", server_nonce, client_nonce)):
            self._refuse(sock)
            raise AuthenticationError("wrong group secret")
        if answer.get("protocol") != PROTOCOL_VERSION:
            self._refuse(sock)
            raise AuthenticationError(f"protocol {answer.get('protocol')} (this side speaks {PROTOCOL_VERSION})")
        send_message(sock, "welcome", {"mac": _mac(self._secret, b"server", client_nonce, server_nonce)})
        return hello if isinstance(hello, dict) else {}

    @staticmethod
    def _refuse(sock: socket.socket) -> None:
        try:
            send_message(sock, "refused", {"reason": "authentication failed"})
        except OSError:
            pass

    def close(self) -> None:
        """Stop listening; pending handshakes are cut and authenticated channels nobody took are closed."""
        self._closed.set()
        self._acceptor.join(timeout=5.0)
        self._listener.close()
        with self._lock:
            pending = list(self._pending)
        for sock in pending:
            _shutdown(sock)
        while (channel := self.accept(timeout=0)) is not None:
            channel.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def connect(address: tuple[str, int], secret: str, hello: dict[str, Any], timeout_s: float = 30.0) -> Channel:
    """Connect to a group's control server and authenticate both ways; raises ``AuthenticationError``."""
    key = _secret_bytes(secret)
    sock = socket.create_connection(address, timeout=timeout_s)
    try:
        challenge = recv_message(sock, max_header=_HANDSHAKE_HEADER_LIMIT, max_payload=0)
        server_nonce = challenge.get("nonce")
        if challenge.kind != "challenge" or not isinstance(server_nonce, str):
            raise AuthenticationError(f"expected a challenge from the control server, got {challenge.kind!r}")
        client_nonce = secrets.token_hex(16)
        send_message(
            sock,
            "auth",
            {
                "nonce": client_nonce,
                "mac": _mac(key, b"client", server_nonce, client_nonce),
                "protocol": PROTOCOL_VERSION,
                "hello": hello,
            },
        )
        welcome = recv_message(sock, max_header=_HANDSHAKE_HEADER_LIMIT, max_payload=0)
        if welcome.kind != "welcome":
            raise AuthenticationError(f"the control server refused this worker: {welcome.get('reason', welcome.kind)}")
        expected = _mac(key, b"server", client_nonce, server_nonce)
        if not _mac_matches(welcome.get("mac"), expected):
            raise AuthenticationError("the control server did not prove the group secret")
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Channel(sock, {"address": address})


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
