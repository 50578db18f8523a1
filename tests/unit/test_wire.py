"""The worker group's frames: tensors round-trip bit-exactly, and malformed frames are rejected, never executed."""

from __future__ import annotations

import json
import socket
import struct

import pytest
import torch

from dax_core.runtime.wire import MAGIC, PeerClosed, ProtocolError, recv_message, send_message


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_tensors_and_fields_round_trip_bit_exactly(pair):
    a, b = pair
    g = torch.Generator().manual_seed(0)
    tensors = {
        "latent": torch.randn(1, 16, 2, 3, 5, generator=g),
        "text": torch.randn(1, 7, 32, generator=g).to(torch.bfloat16),
        "half": torch.randn(4, generator=g).half(),
        "ids": torch.arange(-3, 3, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 4),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "strided": torch.randn(6, 4, generator=g).t(),  # not contiguous: sent in C order
    }
    send_message(a, "request", {"id": 7, "seed": 2**64 - 1, "sampler": "euler", "cfg": 6.0}, tensors)
    msg = recv_message(b)
    assert msg.kind == "request"
    assert msg.fields == {"id": 7, "seed": 2**64 - 1, "sampler": "euler", "cfg": 6.0}
    assert list(msg.tensors) == list(tensors)
    for name, t in tensors.items():
        got = msg.tensors[name]
        assert got.dtype == t.dtype and got.shape == t.shape, name
        assert torch.equal(got, t), name


def _raw_frame(header: dict | bytes, payload: bytes = b"") -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("!4sI", MAGIC, len(body)) + body + payload


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "magic"),
        (struct.pack("!4sI", MAGIC, 10) + b"not json!!", "not JSON"),
        (_raw_frame({"no": "type"}), "'type'"),
        (_raw_frame({"type": "x", "tensors": [{"name": "t", "dtype": "object", "shape": [1]}]}), "dtype"),
        (_raw_frame({"type": "x", "tensors": [{"name": "t", "dtype": "float32", "shape": [-1]}]}), "shape"),
        (_raw_frame({"type": "x", "tensors": [{"name": "t", "dtype": "float32", "shape": [4]}]}, b"\0" * 8), "inside"),
        (_raw_frame({"type": "x", "tensors": [{"name": "t", "dtype": "float32", "shape": [1 << 40]}]}), "limit"),
        (_raw_frame({"type": "x", "tensors": [{"name": "t", "dtype": "float32", "shape": [0, 1 << 70]}]}), "limit"),
        (_raw_frame({"type": "x", "tensors": [{"name": "t", "dtype": ["float32"], "shape": [1]}]}), "dtype"),
        (_raw_frame({"type": "x", "tensors": 5}), "'tensors' must be a list"),
        (_raw_frame({"type": "x", "tensors": None}), "'tensors' must be a list"),
        (_raw_frame(b"[" * 5000 + b"]" * 5000), "RecursionError"),
        (_raw_frame(b'{"type": "x", "n": ' + b"9" * 5000 + b"}"), "not JSON"),
    ],
)
def test_malformed_frames_are_rejected(pair, frame: bytes, error: str):
    a, b = pair
    a.sendall(frame)
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match=error):
        recv_message(b)


def test_header_limit_and_clean_close(pair):
    a, b = pair
    a.sendall(struct.pack("!4sI", MAGIC, 5000))
    with pytest.raises(ProtocolError, match="exceeds the limit of 4096"):
        recv_message(b, max_header=4096)
    a.close()
    with pytest.raises(PeerClosed):
        recv_message(b)
