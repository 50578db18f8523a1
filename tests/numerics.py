"""Numerical comparisons shared by the CPU and GPU tests."""

from __future__ import annotations

import torch


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error ``||got - ref|| / ||ref||``, computed in float64 on ``ref``'s device.

    Both sides are upcast before subtracting, so the error of a bf16 or float32 result is measured, not the
    rounding of the difference or of the norms in that dtype. ``got`` is moved to ``ref``'s device, so a GPU
    result compares directly against a float64 reference built on the CPU. The shapes broadcast as in ``-``.
    """
    ref = ref.double()
    got = got.to(device=ref.device, dtype=torch.float64)
    return ((got - ref).norm() / ref.norm()).item()
