"""Attention backends behind one signature.

Every backend takes q, k, v laid out [batch, tokens, heads, head_dim] and returns the same layout.
Availability is checked once per backend; a backend that is not installed is an error that says how
to install it. Nothing falls back silently.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class BackendUnavailable(RuntimeError):
    """The requested attention backend cannot run here."""


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    fn: AttentionFn
    description: str
    check: Callable[[], str | None]
    """Returns None when the backend can run, else the reason it cannot (with the install hint)."""

    @functools.cached_property
    def unavailable_reason(self) -> str | None:
        return self.check()


_BACKENDS: dict[str, AttentionBackend] = {}


def register(backend: AttentionBackend) -> AttentionBackend:
    if backend.name in _BACKENDS:
        raise ValueError(f"attention backend {backend.name!r} is registered twice")
    _BACKENDS[backend.name] = backend
    return backend


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str) -> AttentionBackend:
    """The named backend, ready to run; raises BackendUnavailable with the reason and a hint otherwise."""
    if name not in _BACKENDS:
        raise BackendUnavailable(f"unknown attention backend {name!r}; choose one of {', '.join(backend_names())}")
    backend = _BACKENDS[name]
    reason = backend.unavailable_reason
    if reason is not None:
        raise BackendUnavailable(f"attention backend {name!r} is not available: {reason}")
    return backend
