"""Requests and results as control-channel messages and back: scalar fields in the header, tensors as tensors."""

from __future__ import annotations

from typing import Any

import torch

from ..attention.schedule import DensityReport
from ..cache.base import BranchReport, StepCacheReport
from .engine import SampleRequest, SampleResult
from .progress import StepProgress
from .wire import Message

_SCALARS = (
    "seed",
    "steps",
    "cfg",
    "shift",
    "sampler",
    "scheduler",
    "denoise",
    "start_at_step",
    "end_at_step",
    "add_noise",
    "return_with_leftover_noise",
    "low_noise_cfg",
)
_OPTIONAL_TENSORS = (
    "negative", "sigmas", "positive_image", "negative_image", "positive_clip", "negative_clip", "noise_mask",
)  # fmt: skip


def request_fields(req: SampleRequest) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header fields, tensors) of a request; every tensor keeps its dtype (the SIGMAS input too, bit for bit)."""
    tensors = {"positive": req.positive, "latent": req.latent}
    for name in _OPTIONAL_TENSORS:
        if getattr(req, name) is not None:
            tensors[name] = getattr(req, name)
    return {name: getattr(req, name) for name in _SCALARS}, tensors


def request_from_message(msg: Message) -> SampleRequest:
    """Rebuild (and so re-validate) the request a message carries."""
    missing = [name for name in _SCALARS if name not in msg.fields]
    missing += [name for name in ("positive", "latent") if name not in msg.tensors]
    if missing:
        raise ValueError(f"sample request message lacks {missing}")
    return SampleRequest(
        positive=msg.tensors["positive"],
        latent=msg.tensors["latent"],
        **{name: msg.tensors.get(name) for name in _OPTIONAL_TENSORS},
        **{name: msg[name] for name in _SCALARS},
    )


def result_fields(result: SampleResult) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    fields: dict[str, Any] = {
        "steps": result.steps,
        "seconds": result.seconds,
        "first_step_seconds": result.first_step_seconds,
        "step_cache": None,
        "attention": None,
        "first_step_compiled": result.first_step_compiled,
        "kernels": list(result.kernels),
        "peak_memory_bytes": list(result.peak_memory_bytes),
        "notes": list(result.notes),
    }
    report = result.step_cache
    if report is not None:
        branches = [{"name": b.name, "pattern": b.pattern} for b in report.branches]
        fields["step_cache"] = {"cache": report.cache, "steps": report.steps, "branches": branches}
    if result.attention is not None:
        fields["attention"] = {"name": result.attention.name, "densities": list(result.attention.densities)}
    return fields, {"latent": result.latent}


def result_from_message(msg: Message) -> SampleResult:
    report = msg.get("step_cache")
    step_cache = None
    if report is not None:
        branches = tuple(BranchReport(b["name"], b["pattern"]) for b in report["branches"])
        step_cache = StepCacheReport(report["cache"], int(report["steps"]), branches)
    densities = msg.get("attention")
    attention = None
    if densities is not None:
        values = tuple(None if d is None else float(d) for d in densities["densities"])
        attention = DensityReport(str(densities["name"]), values)
    return SampleResult(
        latent=msg.tensors["latent"],
        steps=int(msg["steps"]),
        seconds=float(msg["seconds"]),
        first_step_seconds=float(msg["first_step_seconds"]),
        step_cache=step_cache,
        attention=attention,
        first_step_compiled=bool(msg.get("first_step_compiled", False)),
        kernels=tuple(str(line) for line in msg.get("kernels", ())),
        peak_memory_bytes=tuple(int(b) for b in msg.get("peak_memory_bytes", ())),
        notes=tuple(str(note) for note in msg.get("notes", ())),
    )


PREVIEW_WIRE_DTYPE = torch.float16  # half the bytes of float32; a preview needs no more


def progress_fields(p: StepProgress) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(header fields, tensors) of rank 0's progress message after a step."""
    fields: dict[str, Any] = {
        "step": p.step,
        "total": p.total,
        "elapsed_s": p.elapsed_s,
        "first_step_s": p.first_step_s,
        "cache": p.cache,
        "skipped": [[name, n] for name, n in p.skipped],
    }
    tensors = {} if p.preview is None else {"preview": p.preview.to(PREVIEW_WIRE_DTYPE)}
    return fields, tensors


def progress_from_message(msg: Message) -> StepProgress:
    preview = msg.tensors.get("preview")
    return StepProgress(
        step=int(msg["step"]),
        total=int(msg["total"]),
        elapsed_s=float(msg["elapsed_s"]),
        first_step_s=float(msg["first_step_s"]),
        cache=msg.get("cache"),
        skipped=tuple((str(name), int(n)) for name, n in msg.get("skipped", ())),
        preview=None if preview is None else preview.float(),
    )
