"""Attention backend registry. Importing this package registers every built-in backend."""

from . import sdpa as _sdpa  # noqa: F401  (registers "sdpa")
from .registry import AttentionBackend, AttentionFn, BackendUnavailable, backend_names, get_backend

__all__ = ["AttentionBackend", "AttentionFn", "BackendUnavailable", "backend_names", "get_backend"]
