"""Attention backends: one registry, one signature (q, k, v [B, S, H, D] -> [B, S, H, D]), one file each.

Importing this package registers every built-in backend: ``sdpa``, ``sdpa_cudnn``, ``sdpa_flash``, ``flash``,
``sage`` and ``auto``. Bind one for a device with ``bind_attention(name, device, dtype, **options)``. It also
registers the block-sparse kernels of radial attention (``block_sparse.py``): ``sparge``, ``flex``, ``reference``.
"""

# isort: off
# Registration order is the order the node lists them in.
from . import sdpa, sdpa_cudnn, sdpa_flash, flash, sage, auto  # noqa: F401
from . import block_sparse_sage, block_sparse_flex, block_sparse_reference  # noqa: F401

# isort: on
from .registry import (
    AttentionBackend,
    AttentionFn,
    BackendUnavailable,
    BoundAttention,
    available_backends,
    backend_names,
    bind_attention,
    get_backend,
    lse_backend_names,
)
from .sdpa import SDPA_DEFAULT

__all__ = [
    "SDPA_DEFAULT",
    "AttentionBackend",
    "AttentionFn",
    "BackendUnavailable",
    "BoundAttention",
    "available_backends",
    "backend_names",
    "bind_attention",
    "get_backend",
    "lse_backend_names",
]
