"""The control channel authenticates both ways: no secret, a wrong secret or a stranger's bytes are refused."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest

from dax_core.runtime.control import PROTOCOL_VERSION, AuthenticationError, ControlServer, connect, new_secret
from dax_core.runtime.wire import MAGIC, recv_message, send_message

SECRET = new_secret()


@pytest.fixture
def server():
    srv = ControlServer(SECRET)
    yield srv
    srv.close()


def _accept_in_thread(srv: ControlServer) -> tuple[threading.Thread, list]:
    accepted: list = []
    thread = threading.Thread(target=lambda: accepted.append(srv.accept()), daemon=True)
    thread.start()
    return thread, accepted


def test_listens_on_loopback_only(server):
    assert server.address[0] == "127.0.0.1"


def test_a_worker_with_the_secret_is_accepted_and_can_talk(server):
    thread, accepted = _accept_in_thread(server)
    client = connect(server.address, SECRET, {"rank": 1, "pid": 42})
    thread.join(5)
    (channel,) = accepted
    assert channel is not None and channel.peer == {"rank": 1, "pid": 42}
    client.send("progress", step=3)
    assert channel.recv().fields == {"step": 3}
    client.close()
    channel.close()


def test_a_wrong_secret_is_refused(server):
    thread, accepted = _accept_in_thread(server)
    with pytest.raises(AuthenticationError, match="refused"):
        connect(server.address, new_secret(), {"rank": 0})
    thread.join(5)
    assert accepted == [None] and server.refused == 1


def test_a_connection_without_the_secret_is_refused_before_any_request_is_read(server):
    thread, accepted = _accept_in_thread(server)
    with socket.create_connection(server.address, timeout=5) as sock:
        assert recv_message(sock).kind == "challenge"
        send_message(sock, "request", {"id": 1, "seed": 0})  # skips authentication
        assert recv_message(sock).kind == "refused"
        assert sock.recv(1) == b""  # and the server closed the connection
    thread.join(5)
    assert accepted == [None] and server.refused == 1


def test_garbage_is_refused_and_the_server_keeps_accepting(server):
    thread, accepted = _accept_in_thread(server)
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        thread.join(5)
    assert accepted == [None]
    thread, accepted = _accept_in_thread(server)
    connect(server.address, SECRET, {"rank": 0}).close()
    thread.join(5)
    assert accepted[0] is not None


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
    thread, accepted = _accept_in_thread(server)
    with socket.create_connection(server.address, timeout=5) as sock:
        assert recv_message(sock).kind == "challenge"
        sock.sendall(answer)
        thread.join(5)
    assert not thread.is_alive() and accepted == [None] and server.refused == 1
    thread, accepted = _accept_in_thread(server)
    client = connect(server.address, SECRET, {"rank": 0})
    thread.join(5)
    (channel,) = accepted
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
