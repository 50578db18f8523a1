"""Timing on any device: synchronise before reading the clock, medians of repeats, peak memory, where it ran."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], reps: int, device: torch.device, warmup: int = 0) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn`` after ``warmup`` untimed ones, each bracketed by ``sync``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def device_name(device: torch.device | None = None) -> str:
    """The GPU's name, or "cpu"."""
    if device is not None and device.type != "cuda":
        return "cpu"
    return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cpu"


def reset_peak(device: torch.device) -> int:
    """Start counting peak memory on ``device``; returns the bytes allocated now (0 on the CPU: not tracked)."""
    if device.type != "cuda":
        return 0
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_since(device: torch.device, allocated_before: int) -> int | None:
    """Bytes allocated at the peak since ``reset_peak`` above what was allocated then (None on the CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) - allocated_before


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
