"""A rank's control-channel reader never dies quietly: a failure there is reported to the owner and ends the rank,
instead of leaving the rank's main thread (and the owner) waiting forever for the next message."""

from __future__ import annotations

import queue
from typing import Any

import pytest

from dax_core.runtime.wire import Message
from dax_core.runtime.worker import EXIT_FAILED, EXIT_OWNER_GONE, Inbox


class ScriptedChannel:
    """Hands out the given messages (or raises the given exceptions) in order, records what the rank sends."""

    def __init__(self, *script: Message | BaseException) -> None:
        self.script = list(script)
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def recv(self) -> Message:
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def send(self, kind: str, tensors: Any = None, **fields: Any) -> None:
        self.sent.append((kind, fields))


def _run_inbox(channel: ScriptedChannel, rank: int) -> tuple[Inbox, int]:
    """Start an inbox on ``channel`` and return it with the exit code its reader ended the process with."""
    codes: queue.Queue[int] = queue.Queue()
    inbox = Inbox(channel, rank, exit_process=codes.put)  # type: ignore[arg-type]
    return inbox, codes.get(timeout=30)


def test_a_cancel_without_a_request_id_is_reported_with_the_rank_and_ends_the_rank():
    channel = ScriptedChannel(Message("request", {"id": 1}), Message("cancel", {}))
    inbox, code = _run_inbox(channel, rank=3)
    assert code == EXIT_FAILED
    ((kind, fields),) = channel.sent
    assert kind == "error" and fields["rank"] == 3 and fields["exception"] == "ProtocolError"
    assert "a cancel message needs an integer request 'id'" in fields["message"]
    assert inbox.messages.get_nowait().kind == "request"  # what came before the bad message was kept


@pytest.mark.parametrize("failure", [RuntimeError("decoder bug"), KeyError("id")])
def test_any_failure_of_the_reader_is_reported_and_ends_the_rank(failure: Exception):
    channel = ScriptedChannel(failure)
    _, code = _run_inbox(channel, rank=1)
    assert code == EXIT_FAILED
    ((kind, fields),) = channel.sent
    assert kind == "error" and fields["rank"] == 1 and fields["exception"] == type(failure).__name__
    assert "_read" in fields["traceback"]


def test_cancels_are_noted_and_other_messages_queued_until_the_owner_goes():
    channel = ScriptedChannel(Message("cancel", {"id": 5}), Message("request", {"id": 6}), ConnectionResetError())
    inbox, code = _run_inbox(channel, rank=0)
    assert code == EXIT_OWNER_GONE and channel.sent == []  # the owner is gone: nothing to report to
    assert inbox.cancelled(5) and not inbox.cancelled(6)
    assert inbox.messages.get_nowait()["id"] == 6
