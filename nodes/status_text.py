"""The Multi-GPU Sampler's status text: what it shows under the node while it samples, and after.

Pure formatting of what the engine reports (``StepProgress`` per step, ``SampleResult`` at the end) and of where
it runs; sending the text is the sampler's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from dax_core.runtime.engine import SampleResult
from dax_core.runtime.progress import StepProgress


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass(frozen=True)
class Setup:
    """Where a run happens: the devices, the split over them, and whether the model (or group) was already up."""

    devices: str  # the GPU's name ("NVIDIA H200"), the names of a group's GPUs, or "CPU"
    layout: str = ""  # e.g. "1 GPU", or a group's split: "2 GPUs: ulysses=2, overlap on"
    group: bool = False
    reused: bool = False

    def describe(self) -> str:
        if self.group:
            state = "warm worker group reused" if self.reused else "worker group started"
        else:
            state = "model already loaded" if self.reused else "model loaded"
        return " · ".join(part for part in (self.layout, self.devices, state) if part)


def device_names(names: list[str]) -> str:
    """``NVIDIA H200`` for one or several of the same GPU, else the names in order."""
    return names[0] if len(set(names)) == 1 else ", ".join(names)


def _skips(p: StepProgress) -> str | None:
    if p.cache is None:
        return None
    counts = ", ".join(f"{name} {n}" for name, n in p.skipped) or "none yet"
    return f"{p.cache} skipped so far: {counts}"


def progress_text(p: StepProgress, setup: Setup) -> str:
    """The status while sampling, e.g. ``step 12 / 50 · 2.31 s/step · about 1 min 28 s left``."""
    if p.step == 1:
        pace = f"first step {p.first_step_s:.1f} s"
    else:
        pace = f"{p.seconds_per_step:.2f} s/step"
    first = f"step {p.step} / {p.total} · {pace}"
    if p.step < p.total:
        first += f" · about {duration(p.eta_s)} left"
    lines = [first, _skips(p), setup.describe()]
    return "\n".join(line for line in lines if line)


def summary_text(result: SampleResult, setup: Setup) -> str:
    """The status after the run: the engine's summary of it, and where it ran."""
    return "\n".join([*result.summary_lines(), setup.describe()])
