"""What a one-machine worker group exposes to other users and processes (CPU, gloo, 2 processes): nothing listens
beyond loopback, the rendezvous is a file in a folder only the owner can open, the secret is on no command line and
in no environment, a stranger's idle connections cannot stop the start, a failed start names its cause, and nothing
is left in the temp folder afterwards."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import stat

import pytest

from dax_core.runtime.control import SECRET_ENV, new_secret
from dax_core.runtime.distributed import parallel_layout
from dax_core.runtime.group import GroupConfig, WorkerGroup, WorkerGroupError, free_port
from dax_core.runtime.launch import STORE_ENV, STORE_FILE
from tests.unit.faulty_worker import MODULE as FAULTY_WORKER
from tests.unit.faulty_worker import WAIT_FOR_ENV, WRONG_SECRET_ENV
from tests.unit.group_helpers import (
    assert_all_gone,
    assert_no_leftovers,
    assert_same_latent,
    private_tmp,
    tiny_request,
)

SECRET = new_secret()
CONFIG = GroupConfig(2, device="cpu", parallel=parallel_layout(2), worker_module=FAULTY_WORKER)


@pytest.fixture
def tmp(tmp_path):
    with private_tmp(tmp_path / "tmp") as folder:
        yield folder


def _listening(pid: int) -> list[tuple[str, int]]:
    import psutil

    return [(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("all") if c.status == "LISTEN"]


def test_a_running_group_listens_on_loopback_only_and_hides_its_secret(tmp, recipe, reference):
    with WorkerGroup(recipe, CONFIG, secret=SECRET) as group:
        assert group.control_address.startswith("127.0.0.1:")
        assert_same_latent(group.sample(tiny_request()), reference)  # gloo's pairs are connected by now
        procs = group.processes()
        assert sorted(p.pid for p in procs) == sorted(group.worker_pids.values())
        sockets = {p.pid: _listening(p.pid) for p in procs}
        assert all(sockets.values()), sockets  # gloo listens per pair: there is something to look at
        assert all(ipaddress.ip_address(ip).is_loopback for found in sockets.values() for ip, _ in found), sockets
        for p in procs:
            environ = open(f"/proc/{p.pid}/environ", "rb").read()
            assert SECRET.encode() not in environ and SECRET_ENV.encode() not in environ
            assert SECRET not in " ".join(p.cmdline())
            assert p.environ()[STORE_ENV].endswith(STORE_FILE)
        # the rendezvous: a file in a fresh folder of the owner's that no other user can open (no TCP store)
        folder = os.path.dirname(procs[0].environ()[STORE_ENV])
        info = os.stat(folder)
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
        assert os.path.dirname(folder) == str(tmp)
    assert_all_gone(procs)
    assert_no_leftovers(tmp)


def test_five_idle_connections_to_the_control_port_during_start_do_not_stop_it(tmp, recipe, reference):
    port = free_port()
    go = tmp.parent / "ranks-may-connect"
    config = dataclasses.replace(CONFIG, control_port=port, env=((WAIT_FOR_ENV, str(go)),))
    idle: list[socket.socket] = []

    def strangers_first() -> bool:  # asked while the ranks connect: the ranks wait for the file
        if not idle:
            idle.extend(socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(5))
            go.touch()
        return False

    try:
        with WorkerGroup(recipe, config, secret=SECRET, should_cancel=strangers_first) as group:
            assert len(idle) == 5
            assert_same_latent(group.sample(tiny_request()), reference)
            for sock in idle:  # the server let them go once every rank had joined
                sock.settimeout(5)
                assert sock.recv(1 << 16).startswith(b"DAX1") and sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    assert_no_leftovers(tmp)


def test_a_rank_that_cannot_join_fails_the_start_with_its_own_error(tmp, recipe):
    config = dataclasses.replace(CONFIG, env=((WRONG_SECRET_ENV, "1"),))
    with pytest.raises(WorkerGroupError) as failed:
        WorkerGroup(recipe, config, secret=SECRET)
    message = str(failed.value)
    first = message.splitlines()[0]
    assert "while the ranks were connecting: rank 1 (pid" in first and "exited with code 1" in first, message
    assert "could not join the worker group: AuthenticationError: the control server refused" in first, message
    assert_no_leftovers(tmp)
