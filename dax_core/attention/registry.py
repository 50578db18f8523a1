"""Attention backends behind one signature.

Every backend takes q, k, v laid out [batch, tokens, heads, head_dim] and returns the output in the same
layout (``scale`` defaults to 1/sqrt(head_dim)). A backend that offers it also returns the log-sum-exp of
the scaled logits, float32 [batch, heads, tokens], which ring attention needs to merge partial results.

A backend is *bound* once, for one device, dtype and set of options (``AttentionBackend.bind``): binding is
where a missing package, a GPU without the kernel or an unsupported dtype becomes an error that says what
to install or change. The bound kernel then runs as chosen; nothing falls back silently in the middle of a run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""What a model calls: (q, k, v) [B, S, H, D] -> out [B, S, H, D]."""
Rope = tuple[torch.Tensor, torch.Tensor]
"""cos, sin [S, head_dim / 2] of the rotary embedding."""


class Kernel(Protocol):
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor: ...


class LseKernel(Protocol):
    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class PreparedInputs(Protocol):
    """A kernel fed by its own preparation kernels, which also apply the layer's RMSNorm (and rotary embedding):
    the model hands it the q, k and v projections [B, S, H * D] instead of normalised q, k, v."""

    def query(self, x: torch.Tensor, weight: torch.Tensor, rope: Rope | None, num_heads: int, eps: float) -> Any: ...

    def key(self, x: torch.Tensor, weight: torch.Tensor, rope: Rope | None, num_heads: int, eps: float) -> Any: ...

    def value(self, v: torch.Tensor, num_heads: int) -> Any: ...

    def attend(self, q: Any, k: Any, v: Any, scale: float | None = None) -> torch.Tensor: ...


class BackendUnavailable(RuntimeError):
    """The requested attention backend cannot run here; the message says what to install or choose instead."""


@dataclass(frozen=True)
class BoundAttention:
    """One attention kernel, chosen for a device, dtype and options. Calling it runs that kernel, nothing else."""

    backend: str
    kernel: str
    """What runs, in words (for logs and the node)."""
    run: Kernel = field(repr=False)
    run_lse: LseKernel | None = field(default=None, repr=False)
    capturable: bool = True
    """Whether a CUDA graph can record it: its kernels launch on PyTorch's current stream."""
    prepared: PreparedInputs | None = field(default=None, repr=False)
    """Set when the model should hand the kernel its projections for its own preparation (``PreparedInputs``);
    ``run`` still takes normalised q, k, v (sequence parallelism, benchmarks)."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        return self.run(q, k, v, scale)

    @property
    def supports_lse(self) -> bool:
        return self.run_lse is not None

    def with_lse(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(out [B, S, H, D], lse float32 [B, H, S]) with lse = log(sum_j exp(scale * q.k_j)) per query row."""
        if self.run_lse is None:
            raise BackendUnavailable(
                f"attention backend {self.backend!r} ({self.kernel}) does not return the log-sum-exp that ring "
                f"attention needs; use one of {', '.join(lse_backend_names())}"
            )
        return self.run_lse(q, k, v, scale)


Binder = Callable[[torch.device, torch.dtype, Mapping[str, str]], BoundAttention]


@dataclass(frozen=True)
class AttentionBackend:
    """A registered backend: how to tell whether it can run here, and how to bind it for a device."""

    name: str
    description: str
    check: Callable[[], str | None] = field(repr=False)
    """None when the backend's packages are present, else why not, with the install hint."""
    binder: Binder = field(repr=False)
    options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Option name -> allowed values; the first value is the default."""
    offers_lse: bool = False

    @functools.cached_property
    def unavailable_reason(self) -> str | None:
        """Checked once per process (a backend does not become installed while a run goes on)."""
        return self.check()

    def bind(self, device: torch.device | str, dtype: torch.dtype = torch.bfloat16, **options: str) -> BoundAttention:
        """The kernel this backend runs on ``device`` for q/k/v of ``dtype``; raises BackendUnavailable otherwise."""
        reason = self.unavailable_reason
        if reason is not None:
            raise BackendUnavailable(f"attention backend {self.name!r} is not available: {reason}")
        chosen = {name: values[0] for name, values in self.options.items()}
        for name, value in options.items():
            if name not in self.options:
                known = ", ".join(self.options) or "none"
                raise ValueError(f"attention backend {self.name!r} has no option {name!r} (its options: {known})")
            if value not in self.options[name]:
                raise ValueError(f"{self.name} option {name}={value!r} is not one of {', '.join(self.options[name])}")
            chosen[name] = value
        return self.binder(torch.device(device), dtype, chosen)


_BACKENDS: dict[str, AttentionBackend] = {}


def register(backend: AttentionBackend) -> AttentionBackend:
    if backend.name in _BACKENDS:
        raise ValueError(f"attention backend {backend.name!r} is registered twice")
    _BACKENDS[backend.name] = backend
    return backend


def backend_names() -> list[str]:
    """Every registered backend, installed or not, in registration order."""
    return list(_BACKENDS)


def lse_backend_names() -> list[str]:
    return [name for name, b in _BACKENDS.items() if b.offers_lse]


def available_backends() -> list[str]:
    """The registered backends whose packages are present (each checked once)."""
    return [name for name, b in _BACKENDS.items() if b.unavailable_reason is None]


def get_backend(name: str) -> AttentionBackend:
    """The named backend; raises BackendUnavailable when it is unknown or not installed (with the install hint)."""
    if name not in _BACKENDS:
        raise BackendUnavailable(f"unknown attention backend {name!r}; choose one of {', '.join(backend_names())}")
    backend = _BACKENDS[name]
    reason = backend.unavailable_reason
    if reason is not None:
        raise BackendUnavailable(f"attention backend {name!r} is not available: {reason}")
    return backend


def bind_attention(
    name: str, device: torch.device | str, dtype: torch.dtype = torch.bfloat16, **options: str
) -> BoundAttention:
    """``get_backend(name).bind(device, dtype, **options)``."""
    return get_backend(name).bind(device, dtype, **options)


def check_qkv(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """The layout contract: 4-d [B, S, H, D] tensors of one dtype and device, k and v of equal length."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"{backend} attention takes q, k, v as [batch, tokens, heads, head_dim]; got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"{backend} attention: q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must share batch "
            "and heads, q and k the head_dim, k and v the length"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{backend} attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
