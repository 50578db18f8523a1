"""A ``SampleRequest`` as a control-channel message and back: scalar fields in the header, tensors as tensors."""

from __future__ import annotations

from typing import Any

import torch

from .engine import SampleRequest
from .wire import Message

_SCALARS = ("seed", "steps", "cfg", "shift", "sampler", "scheduler")


def request_fields(req: SampleRequest) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header fields, tensors) of a request; text embeddings keep their dtype, the latent its float dtype."""
    tensors = {"positive": req.positive, "latent": req.latent}
    if req.negative is not None:
        tensors["negative"] = req.negative
    return {name: getattr(req, name) for name in _SCALARS}, tensors


def request_from_message(msg: Message) -> SampleRequest:
    """Rebuild (and so re-validate) the request a message carries."""
    missing = [name for name in _SCALARS if name not in msg.fields]
    missing += [name for name in ("positive", "latent") if name not in msg.tensors]
    if missing:
        raise ValueError(f"sample request message lacks {missing}")
    return SampleRequest(
        positive=msg.tensors["positive"],
        negative=msg.tensors.get("negative"),
        latent=msg.tensors["latent"],
        **{name: msg[name] for name in _SCALARS},
    )
