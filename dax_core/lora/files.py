"""LoRA files: a cheap fingerprint of their content, and the recipe entry that names one.

The fingerprint hashes the safetensors header (every tensor's name, dtype, shape and offset), the file's size and
16 evenly spaced 64 KiB samples of its tensor data: at most about 1 MiB read, whatever the file's size, so the Load
LoRA node can take it on every prompt. A retrained or re-extracted LoRA changes every tensor, so it is seen; an edit
confined to bytes no sample covers, with the same size and header, is not (no LoRA tool writes such a file).
Rejected alternatives: a streamed hash of the whole file reads it all (about 1 s per 600 MB at every check), and
the modification time is not content (a copy to another machine of a worker group changes it, an in-place rewrite
within its resolution does not).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..models.safetensors_files import read_header
from ..models.weights_error import WeightsError
from ..recipe import LoraRef
from .plan import LoraError

SAMPLES = 16
SAMPLE_BYTES = 64 * 1024


def lora_fingerprint(path: str | os.PathLike) -> str:
    """16 hex digits identifying the content of the safetensors file at ``path`` (see the module notes)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            header = f.read(int.from_bytes(prefix, "little"))
            data_start = 8 + len(header)
            digest = hashlib.sha256(prefix + header + size.to_bytes(8, "little"))
            span = max(0, size - data_start - SAMPLE_BYTES)
            for i in range(SAMPLES):
                f.seek(data_start + span * i // (SAMPLES - 1))
                digest.update(f.read(SAMPLE_BYTES))
    except OSError as e:
        raise LoraError(f"{path}: cannot be read ({e.strerror or e})") from e
    return digest.hexdigest()[:16]


def lora_ref(path: str | os.PathLike, strength: float = 1.0) -> LoraRef:
    """The recipe entry of the LoRA at ``path``: its absolute path, ``strength`` and content fingerprint. Raises
    LoraError for a file that is not a whole safetensors file."""
    path = Path(path).absolute()
    try:
        read_header(path)
    except WeightsError as e:
        raise LoraError(str(e)) from e
    return LoraRef(str(path), strength, lora_fingerprint(path))
