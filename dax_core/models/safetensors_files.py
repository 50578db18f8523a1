"""Safetensors headers: read and checked without touching tensor data.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor names to
``{"dtype", "shape", "data_offsets"}`` (plus an optional ``__metadata__`` of strings), then the data.
Reading only the header is what lets ``inspect_weights`` size a 14B model in milliseconds, and checking
the offsets against the file size is what turns a half-finished download into a clear error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .weights_error import WeightsError

# Bytes per element of each safetensors dtype code this loader reads.
ITEMSIZE: Mapping[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
# Short names of the floating dtypes (as used by recipes and WeightsInfo.stored_dtype).
FLOAT_NAMES: Mapping[str, str] = {
    "F8_E4M3": "fp8_e4m3fn",
    "F8_E5M2": "fp8_e5m2",
    "F16": "fp16",
    "BF16": "bf16",
    "F32": "fp32",
    "F64": "fp64",
}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
_FOREIGN_MAGIC = (
    (b"PK\x03\x04", "a PyTorch checkpoint (.pt/.pth/.ckpt zip archive)"),
    (b"\x80", "a pickled PyTorch checkpoint (.pt/.pth/.bin)"),
    (b"GGUF", "a GGUF file (load it with a GGUF loader)"),
)


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # safetensors dtype code, e.g. "BF16", "F8_E4M3"
    shape: tuple[int, ...]
    offset: int  # start of the tensor's bytes, relative to the data region

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: Mapping[str, TensorEntry]
    metadata: Mapping[str, str]
    file_size: int


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate the header of ``path``; raises WeightsError for anything but a whole safetensors file."""
    try:
        file_size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
            raw = f.read(header_len) if 0 < header_len <= MAX_HEADER_BYTES else b""
    except OSError as e:
        raise WeightsError(f"{path}: cannot be read ({e.strerror or e})") from e
    if file_size == 0:
        raise WeightsError(f"{path}: the file is empty (0 bytes); the download or copy did not finish - fetch it again")
    problem, header = None, None
    if len(prefix) < 8:
        problem = (
            f"only {file_size} bytes, too short for a safetensors file; the download did not finish - fetch it again"
        )
    elif header_len > MAX_HEADER_BYTES:
        problem = (
            f"does not start like a safetensors file (header length field reads {header_len} bytes); "
            "expected a .safetensors file - the file is corrupt or in another format"
        )
    elif 8 + header_len > file_size:
        problem = (
            f"truncated - the safetensors header alone should be {header_len} bytes but the file has only "
            f"{file_size} bytes; the download did not finish - fetch the file again"
        )
    elif not raw.startswith(b"{"):
        problem = (
            "does not start like a safetensors file (its header is not a JSON object); "
            "expected a .safetensors file - the file is corrupt or in another format"
        )
    else:
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            problem = f"corrupt safetensors header (not valid JSON: {e}); the file is damaged - fetch it again"
    if problem is not None:
        for magic, what in _FOREIGN_MAGIC:
            if prefix.startswith(magic):
                problem = f"this is {what}, not a safetensors file; use the .safetensors release of the model"
        raise WeightsError(f"{path}: {problem}")
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, expected an object)")
    metadata = header.pop("__metadata__", None) or {}
    tensors = {name: _entry(path, name, value) for name, value in header.items()}
    data_size = file_size - 8 - header_len
    needed = max((e.offset + e.numel * ITEMSIZE[e.dtype] for e in tensors.values()), default=0)
    if needed > data_size:
        raise WeightsError(
            f"{path}: truncated - the header describes {needed} bytes of tensor data but the file holds only "
            f"{data_size}; the download did not finish - fetch the file again"
        )
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightsError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    return SafetensorsHeader(path=path, tensors=tensors, metadata=metadata, file_size=file_size)


def _entry(path: Path, name: str, value: object) -> TensorEntry:
    try:
        dtype, shape, (begin, end) = value["dtype"], tuple(value["shape"]), value["data_offsets"]  # type: ignore[index]
        valid = all(isinstance(x, int) and x >= 0 for x in (*shape, begin, end)) and end >= begin
    except (TypeError, KeyError, ValueError):
        valid = False
    if not valid:
        raise WeightsError(f"{path}: corrupt safetensors header (entry {name!r} is {value!r})")
    if dtype not in ITEMSIZE:
        raise WeightsError(
            f"{path}: tensor {name!r} has dtype {dtype}, which this loader does not read "
            f"(supported: {', '.join(ITEMSIZE)})"
        )
    if end - begin != math.prod(shape) * ITEMSIZE[dtype]:
        raise WeightsError(
            f"{path}: corrupt safetensors header (tensor {name!r}: {dtype} {list(shape)} needs "
            f"{math.prod(shape) * ITEMSIZE[dtype]} bytes, offsets give {end - begin})"
        )
    return TensorEntry(dtype=dtype, shape=shape, offset=begin)
