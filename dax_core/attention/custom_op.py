"""Wrapping attention kernels that torch.compile cannot trace as ``torch.library`` custom ops.

A wrapped kernel is one opaque node in a compiled graph (no graph break at attention): the fake
implementation tells the compiler the output shapes without running anything. Every wrapped kernel
follows one schema, ``(Tensor q, Tensor k, Tensor v, float? scale, bool return_lse, ...) -> (Tensor, Tensor)``:
the output [B, S, H, Dv] contiguous in q's dtype, and the float32 log-sum-exp [B, H, S] when asked
for (an empty float32 tensor otherwise). Extra arguments after ``return_lse`` carry kernel options.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

AttentionOpImpl = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def attention_outputs(q: torch.Tensor, v: torch.Tensor, return_lse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty tensors of the shapes, dtypes and strides every wrapped kernel returns."""
    b, s, h, _ = q.shape
    out = q.new_empty((b, s, h, v.shape[-1]))
    lse = q.new_empty((b, h, s) if return_lse else (0,), dtype=torch.float32)
    return out, lse


def no_lse(q: torch.Tensor) -> torch.Tensor:
    """The empty float32 tensor a wrapped kernel returns in place of the log-sum-exp it was not asked for."""
    return q.new_empty((0,), dtype=torch.float32)


def attention_op(qualname: str, *, device_types: str | Sequence[str] | None = None) -> Callable[[AttentionOpImpl], Any]:
    """Decorator: register ``impl`` (annotated, following the schema above) as the custom op ``qualname``."""

    def wrap(impl: AttentionOpImpl) -> Any:
        op = torch.library.custom_op(qualname, mutates_args=(), device_types=device_types)(impl)

        def fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale, return_lse: bool, *options):
            return attention_outputs(q, v, return_lse)

        op.register_fake(fake)
        return op

    return wrap
