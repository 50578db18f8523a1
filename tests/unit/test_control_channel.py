"""The control channel authenticates both ways: no secret, a wrong secret or a stranger's bytes are refused."""

from __future__ import annotations

import socket
import threading

import pytest

from dax_core.runtime.control import AuthenticationError, ControlServer, connect, new_secret
from dax_core.runtime.wire import recv_message, send_message

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


def test_a_worker_refuses_a_server_that_does_not_hold_the_secret():
    impostor = ControlServer(new_secret())
    thread, _ = _accept_in_thread(impostor)
    try:
        with pytest.raises(AuthenticationError):
            connect(impostor.address, new_secret(), {"rank": 0})
    finally:
        thread.join(5)
        impostor.close()
