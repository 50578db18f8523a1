"""The control channel authenticates both ways: no secret, a wrong secret or a stranger's bytes are refused; idle or
slow strangers neither hold up the group's ranks nor stay connected past their deadline."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest

from dax_core.runtime.control import PROTOCOL_VERSION, AuthenticationError, ControlServer, connect, new_secret
from dax_core.runtime.wire import MAGIC, recv_message, send_message

SECRET = new_secret()


@pytest.fixture
def server():
    srv = ControlServer(SECRET)
    yield srv
    srv.close()


def _refused(srv: ControlServer, count: int, within_s: float = 5.0) -> bool:
    """Whether the server has refused ``count`` connections within ``within_s`` (handshakes run on threads)."""
    deadline = time.monotonic() + within_s
    while srv.refused < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return srv.refused == count


def test_listens_on_loopback_only(server):
    assert server.address[0] == "127.0.0.1"


def test_a_worker_with_the_secret_is_accepted_and_can_talk(server):
    client = connect(server.address, SECRET, {"rank": 1, "pid": 42})
    channel = server.accept(timeout=5)
    assert channel is not None and channel.peer == {"rank": 1, "pid": 42}
    client.send("progress", step=3)
    assert channel.recv().fields == {"step": 3}
    client.close()
    channel.close()


def test_a_wrong_secret_is_refused(server):
    with pytest.raises(AuthenticationError, match="refused"):
        connect(server.address, new_secret(), {"rank": 0})
    assert _refused(server, 1) and server.accept(timeout=0.2) is None


def test_a_connection_without_the_secret_is_refused_before_any_request_is_read(server):
    with socket.create_connection(server.address, timeout=5) as sock:
        assert recv_message(sock).kind == "challenge"
        send_message(sock, "request", {"id": 1, "seed": 0})  # skips authentication
        assert recv_message(sock).kind == "refused"
        assert sock.recv(1) == b""  # and the server closed the connection
    assert _refused(server, 1) and server.accept(timeout=0.2) is None


def test_garbage_is_refused_and_the_server_keeps_accepting(server):
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _refused(server, 1)
    connect(server.address, SECRET, {"rank": 0}).close()
    assert server.accept(timeout=5) is not None


def test_idle_connections_do_not_hold_up_a_worker_and_are_cut_at_their_deadline():
    # five strangers connect and say nothing: handshakes run side by side, so the worker's takes no longer for it
    srv = ControlServer(SECRET, handshake_timeout_s=3.0)
    try:
        idle = [socket.create_connection(srv.address, timeout=10) for _ in range(5)]
        assert all(recv_message(sock).kind == "challenge" for sock in idle)
        client = connect(srv.address, SECRET, {"rank": 0}, timeout_s=2.0)  # one at a time would take 5 x 3 s
        channel = srv.accept(timeout=2.0)
        assert channel is not None and channel.peer == {"rank": 0}
        assert srv.refused == 0  # the idle ones are still within their deadline
        for sock in idle:  # then each is cut: the server closes it (its read ends) and counts it refused
            assert sock.recv(1) == b""
        assert _refused(srv, 5)
        client.close()
        channel.close()
    finally:
        srv.close()


def test_connections_beyond_the_pending_limit_are_closed_at_once():
    srv = ControlServer(SECRET, max_pending=2)
    try:
        idle = [socket.create_connection(srv.address, timeout=10) for _ in range(2)]
        assert all(recv_message(sock).kind == "challenge" for sock in idle)
        with socket.create_connection(srv.address, timeout=10) as third:
            assert third.recv(1) == b""  # closed without a challenge
        assert _refused(srv, 1)
    finally:
        srv.close()
    assert all(sock.recv(1) == b"" for sock in idle)  # close() cut the pending handshakes


def _frame(body: bytes) -> bytes:
    return struct.pack("!4sI", MAGIC, len(body)) + body


@pytest.mark.parametrize(
    "answer",
    [
        _frame(b'{"type": "auth", "tensors": 5}'),
        _frame(b'{"type": "auth", "tensors": [{"name": "t", "dtype": ["x"], "shape": []}]}'),
        _frame(b"[" * 2000 + b"]" * 2000),  # within the handshake header limit
        _frame(json.dumps({"type": "auth", "nonce": "n", "mac": "\u00e9" * 64, "protocol": PROTOCOL_VERSION}).encode()),
        _frame(json.dumps({"type": "auth", "nonce": "\ud800", "mac": "0" * 64}).encode()),
    ],
    ids=["tensors-not-a-list", "unhashable-dtype", "nested-too-deeply", "non-ascii-mac", "unencodable-nonce"],
)
def test_a_malformed_answer_is_refused_and_a_real_worker_still_connects(server, answer: bytes):
    with socket.create_connection(server.address, timeout=5) as sock:
        assert recv_message(sock).kind == "challenge"
        sock.sendall(answer)
        assert _refused(server, 1)
    client = connect(server.address, SECRET, {"rank": 0})
    channel = server.accept(timeout=5)
    assert channel is not None and channel.peer == {"rank": 0}
    client.close()
    channel.close()


def _impostor(listener: socket.socket, welcome: dict) -> None:
    """Follows the protocol up to the point where the server must prove the secret, then sends ``welcome``."""
    sock, _ = listener.accept()
    with sock:
        send_message(sock, "challenge", {"nonce": "0" * 32, "protocol": PROTOCOL_VERSION})
        assert recv_message(sock).kind == "auth"
        send_message(sock, "welcome", welcome)
        sock.recv(1)  # until the worker hangs up


@pytest.mark.parametrize("welcome", [{"mac": "0" * 64}, {"mac": "\u00e9" * 64}, {"mac": 7}, {}])
def test_a_worker_refuses_a_server_that_does_not_prove_the_secret(welcome: dict):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=_impostor, args=(listener, welcome), daemon=True)
        thread.start()
        with pytest.raises(AuthenticationError, match="the control server did not prove the group secret"):
            connect(listener.getsockname()[:2], SECRET, {"rank": 0})
        thread.join(5)
