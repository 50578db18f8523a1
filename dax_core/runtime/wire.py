"""The worker group's wire format: small framed messages, a JSON header followed by raw tensor bytes. No pickle.

One frame::

    b"DAX1" | header length (uint32, big endian) | header (UTF-8 JSON object) | tensor bytes...

The header is ``{"type": ..., <fields>, "tensors": [{"name", "dtype", "shape"}, ...]}``; the tensors' bytes
follow in that order, each exactly ``prod(shape) * itemsize`` bytes (C order, the machine's byte order).
The reader trusts nothing: it checks the magic, bounds the header and payload sizes, accepts only the dtypes
listed here and computes every tensor's size itself.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import torch

MAGIC = b"DAX1"
_PREFIX = struct.Struct("!4sI")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 36  # 64 GiB: far above any latent or text embedding, still a bound


class ProtocolError(ConnectionError):
    """The peer sent something that is not a valid frame, or closed the connection mid-frame."""


class PeerClosed(ProtocolError):
    """The peer closed the connection cleanly between two frames."""


@dataclass
class Message:
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def encode_header(kind: str, fields: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    if "type" in fields or "tensors" in fields:
        raise ValueError("message fields may not be named 'type' or 'tensors'")
    meta = []
    for name, t in tensors.items():
        if t.dtype not in _DTYPE_NAMES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which the wire format does not carry")
        meta.append({"name": name, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape)})
    header = json.dumps({"type": kind, **fields, "tensors": meta}, separators=(",", ":")).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"message header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return header


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def send_message(
    sock: socket.socket, kind: str, fields: dict[str, Any] | None = None, tensors: dict[str, torch.Tensor] | None = None
) -> None:
    """Write one frame. Not thread-safe on its own: callers sharing a socket hold a lock."""
    tensors = tensors or {}
    header = encode_header(kind, fields or {}, tensors)
    sock.sendall(_PREFIX.pack(MAGIC, len(header)) + header)
    for t in tensors.values():
        if t.numel():
            sock.sendall(_tensor_bytes(t))


def _recv_exact(sock: socket.socket, n: int, *, at_frame_start: bool = False) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            if at_frame_start and got == 0:
                raise PeerClosed("the peer closed the connection")
            raise ProtocolError(f"connection closed mid-frame ({got} of {n} bytes)")
        got += k
    return buf


def _recv_into_tensor(sock: socket.socket, nbytes: int) -> torch.Tensor:
    raw = torch.empty(nbytes, dtype=torch.uint8)
    view = memoryview(raw.numpy())
    got = 0
    while got < nbytes:
        k = sock.recv_into(view[got:], nbytes - got)
        if k == 0:
            raise ProtocolError(f"connection closed inside a tensor ({got} of {nbytes} bytes)")
        got += k
    return raw


def _tensor_meta(entry: Any) -> tuple[str, torch.dtype, tuple[int, ...], int]:
    if not isinstance(entry, dict) or set(entry) != {"name", "dtype", "shape"}:
        raise ProtocolError(f"bad tensor descriptor {entry!r}")
    name, dtype_name, shape = entry["name"], entry["dtype"], entry["shape"]
    if not isinstance(name, str) or not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise ProtocolError(f"bad tensor name or dtype in {entry!r}")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise ProtocolError(f"bad tensor shape in {entry!r}")
    dtype = DTYPES[dtype_name]
    # Bound the extent with zero-length dimensions counted as one: an empty tensor carries no bytes, but a shape
    # like [0, 2**70] would still overflow when the tensor is built.
    if math.prod(max(s, 1) for s in shape) * dtype.itemsize > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"tensor shape in {entry!r} exceeds the limit of {MAX_PAYLOAD_BYTES} bytes")
    nbytes = math.prod(shape) * dtype.itemsize
    return name, dtype, tuple(shape), nbytes


def recv_message(
    sock: socket.socket,
    *,
    max_header: int = MAX_HEADER_BYTES,
    max_payload: int = MAX_PAYLOAD_BYTES,
) -> Message:
    """Read one frame. Raises ``PeerClosed`` at a clean end of stream, ``ProtocolError`` on anything malformed."""
    magic, length = _PREFIX.unpack(_recv_exact(sock, _PREFIX.size, at_frame_start=True))
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {bytes(magic)!r}: the peer does not speak the DAX worker protocol")
    if length > max_header:
        raise ProtocolError(f"frame header of {length} bytes exceeds the limit of {max_header}")
    raw_header = _recv_exact(sock, length)
    try:
        header = json.loads(raw_header.decode())
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, an over-long integer, nested too deeply
        raise ProtocolError(f"frame header is not JSON: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("frame header must be a JSON object with a string 'type'")
    entries = header.pop("tensors", [])
    if not isinstance(entries, list):
        raise ProtocolError(f"frame header's 'tensors' must be a list of descriptors, not a {type(entries).__name__}")
    metas = [_tensor_meta(m) for m in entries]
    total = sum(m[3] for m in metas)
    if total > max_payload:
        raise ProtocolError(f"frame carries {total} tensor bytes, more than the limit of {max_payload}")
    tensors: dict[str, torch.Tensor] = {}
    for name, dtype, shape, nbytes in metas:
        if name in tensors:
            raise ProtocolError(f"tensor {name!r} appears twice in one frame")
        raw = _recv_into_tensor(sock, nbytes) if nbytes else torch.empty(0, dtype=torch.uint8)
        tensors[name] = raw.view(dtype).reshape(shape)
    kind = header.pop("type")
    return Message(kind, header, tensors)
