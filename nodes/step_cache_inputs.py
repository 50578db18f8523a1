"""Inputs that the step-cache nodes (TeaCache, MagCache) share: their widgets and tooltips."""

from __future__ import annotations

from dax_core.cache.config import CACHE_DEVICES

END_TOOLTIP = "Fraction of the steps from which every step runs (the last step always runs)."
CACHE_DEVICE_TOOLTIP = (
    "Where the cached residuals live: model = the GPU (fastest); cpu = pinned host memory, saving about 0.77 GB of "
    "GPU memory per CFG branch at 14B 720p for a copy each step."
)


def fraction(default: float, tooltip: str) -> tuple[str, dict]:
    """A FLOAT widget from 0 to 1 in steps of 0.01."""
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": tooltip})


def consecutive_skips(default: int, tooltip: str) -> tuple[str, dict]:
    """An INT widget for the number of skipped steps in a row after which the transformer runs (0: no limit)."""
    return ("INT", {"default": default, "min": 0, "max": 100, "tooltip": tooltip})


def end_percent() -> tuple[str, dict]:
    return fraction(1.0, END_TOOLTIP)


def cache_device() -> tuple[list[str], dict]:
    return (list(CACHE_DEVICES), {"default": "model", "tooltip": CACHE_DEVICE_TOOLTIP})
