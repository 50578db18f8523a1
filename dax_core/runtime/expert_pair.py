"""A Wan2.2 A14B model as one engine: its high-noise and low-noise experts, switched at the official boundary.

A run is cut in two at the first step below the boundary (``schedules.expert_switch_step``): the high-noise expert
runs the steps before it and returns the latent with its leftover noise, the low-noise expert continues from there
without adding noise. That is exactly what two KSamplerAdvanced nodes chained with start/end steps do (each starts
its sampler afresh), so one DAX_MODEL of both experts samples as the native two-sampler workflow does.

Each expert is a ``WanEngine`` built from its own recipe (``Recipe.expert``): its own quantized linears, compiled
blocks and attention setup. Where both do not fit on the GPU together, the idle expert waits in pinned host memory
and is swapped in at the boundary (``host_offload``); the run's notes say what the swaps cost.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..experts import EXPERTS, MODEL_CHOICES
from ..parallel.config import ParallelConfig
from ..recipe import Recipe
from .engine import BlockCallback, SampleRequest, SampleResult, StepCallback, WanEngine
from .host_offload import HostOffload, tensor_bytes
from .progress import ProgressCallback, StepProgress
from .schedules import expert_switch_step

log = logging.getLogger(__name__)

ACTIVATION_RESERVE = 0.25
"""Of one expert's weight bytes, what the GPU must have free beyond the second expert's weights for both to stay
resident (activations, attention workspace, the step cache); below that the idle expert is offloaded."""


@dataclass(frozen=True)
class ExpertRun:
    """One expert's part of a run: which expert and the request it samples."""

    expert: str
    request: SampleRequest


def expert_runs(req: SampleRequest, boundary: float) -> list[ExpertRun]:
    """The request cut at the expert boundary: the high-noise expert's steps (leftover noise returned) at ``cfg``,
    then the low-noise expert's (continued without new noise) at ``low_noise_cfg`` (``cfg`` where None), either left
    out where the request runs none of its steps."""
    switch = expert_switch_step(req.schedule_sigmas(), boundary)
    total = len(req.schedule_sigmas()) - 1
    end = total if req.end_at_step is None else min(req.end_at_step, total)
    # each expert's run has one guidance: cfg for the high-noise expert, low_noise_cfg (or cfg) for the low-noise one
    own = {"cfg": req.cfg, "low_noise_cfg": None}
    low_cfg = {"cfg": req.cfg if req.low_noise_cfg is None else req.low_noise_cfg, "low_noise_cfg": None}
    if end <= switch:
        return [ExpertRun("high", dataclasses.replace(req, **own))]
    if req.start_at_step >= switch:
        return [ExpertRun("low", dataclasses.replace(req, **low_cfg))]
    high = dataclasses.replace(req, end_at_step=switch, return_with_leftover_noise=True, **own)
    low = dataclasses.replace(req, start_at_step=switch, add_noise=False, **low_cfg)  # from the high expert's output
    return [ExpertRun("high", high), ExpertRun("low", low)]


class ExpertPair:
    """The two experts of a two-expert recipe, sampled as one engine (``sample`` as ``WanEngine.sample``)."""

    def __init__(
        self, recipe: Recipe, engines: dict[str, WanEngine], offloads: dict[str, HostOffload] | None = None
    ) -> None:
        choice = MODEL_CHOICES[recipe.model_choice]
        if not choice.is_pair or sorted(engines) != sorted(EXPERTS):
            raise ValueError(f"an expert pair needs a two-expert recipe and both experts, got {recipe.model_choice!r}")
        self.recipe = recipe
        self.boundary: float = choice.boundary  # type: ignore[assignment]
        self.engines = engines
        self.offloads = offloads or {}
        """Per expert, its host copy where the experts take turns on the GPU; empty: both stay resident."""
        self.device = engines["high"].device
        self.model = engines["high"].model
        self.swaps: list[tuple[str, float]] = []
        """(expert brought in, seconds of its swap) of the last run."""

    @property
    def parallel(self) -> ParallelConfig | None:
        """How the experts' forwards are split over ranks (the builder sets it on both)."""
        return self.engines["high"].parallel

    @classmethod
    def build(
        cls,
        recipe: Recipe,
        device: torch.device | str,
        build: Callable[[Recipe, torch.device], WanEngine] | None = None,
        offload: bool | None = None,
    ) -> ExpertPair:
        """Build both experts on ``device`` (``build``: how one expert's engine is made; default ``WanEngine.build``).

        ``offload`` None decides by memory: on CUDA, when the free memory after the high-noise expert is built is
        less than another expert's weights plus ``ACTIVATION_RESERVE`` of them, the high-noise expert goes to
        pinned host memory before the low-noise one is built, and the two take turns. True / False force it.
        """
        device = torch.device(device)
        build = build or (lambda r, d: WanEngine.build(r, d))
        high = build(recipe.expert("high"), device)
        needed = tensor_bytes(high.model) * (1.0 + ACTIVATION_RESERVE)
        if offload is None:
            offload = device.type == "cuda" and _free_bytes(device) < needed
        offloads: dict[str, HostOffload] = {}
        if offload:
            offloads["high"] = HostOffload(high.model, device)
            seconds = offloads["high"].offload()
            log.info("the experts do not both fit on %s: the high-noise expert waits in host memory (%.1f s)",
                     device, seconds)  # fmt: skip
        low = build(recipe.expert("low"), device)
        if offload:
            offloads["low"] = HostOffload(low.model, device)
        return cls(recipe, {"high": high, "low": low}, offloads)

    # -- what the samplers and the worker group ask of an engine ---------------------------------------------

    @property
    def usable(self) -> bool:
        return all(e.usable for e in self.engines.values())

    def can_use_loras_of(self, recipe: Recipe) -> bool:
        """A pair serves only its own recipe (LoRAs and step caches are refused on two-expert models)."""
        return self.usable and recipe == self.recipe

    def use_loras_of(self, recipe: Recipe) -> None:
        if recipe != self.recipe:
            raise ValueError("an expert pair takes no other LoRAs in place: build it again")

    def use_step_caches_of(self, recipe: Recipe) -> None:
        if recipe != self.recipe:
            raise ValueError("an expert pair takes no other step caches in place: build it again")

    def _bring_in(self, expert: str) -> None:
        if not self.offloads or self.offloads[expert].resident:
            return
        other = next(e for e in EXPERTS if e != expert)
        seconds = self.offloads[other].offload() + self.offloads[expert].load()
        self.swaps.append((expert, seconds))
        log.info("swapped in the %s-noise expert in %.2f s", expert, seconds)

    def sample(
        self,
        req: SampleRequest,
        on_step: StepCallback | None = None,
        on_block: BlockCallback | None = None,
        on_progress: ProgressCallback | None = None,
        preview: bool = False,
    ) -> SampleResult:
        """Run ``req`` with the high-noise expert down to the boundary and the low-noise expert after it."""
        runs = expert_runs(req, self.boundary)
        total = sum(len(r.request.run_sigmas()) - 1 for r in runs)
        self.swaps = []
        results: list[SampleResult] = []
        latent = req.latent
        done, elapsed = 0, 0.0
        for run in runs:
            self._bring_in(run.expert)
            request = dataclasses.replace(run.request, latent=latent)
            first = results[0].first_step_seconds if results else None
            step_cb = None if on_step is None else _offset_steps(on_step, done, total)
            progress_cb = None if on_progress is None else _offset_progress(on_progress, done, total, elapsed, first)
            result = self.engines[run.expert].sample(request, step_cb, on_block, progress_cb, preview)
            results.append(result)
            latent, done, elapsed = result.latent, done + result.steps, elapsed + result.seconds
        return self._combined(runs, results)

    def _combined(self, runs: list[ExpertRun], results: list[SampleResult]) -> SampleResult:
        last = results[-1]
        parts = ", ".join(f"{r.expert}-noise expert {res.steps}" for r, res in zip(runs, results, strict=True))
        notes = [f"Wan2.2 A14B experts (boundary {self.boundary}): {parts} steps"]
        notes += [f"swapped in the {e}-noise expert from host memory in {s:.2f} s" for e, s in self.swaps]
        for res in results:
            notes += [n for n in res.notes if n not in notes]
        peaks = [max(p) for p in zip(*(r.peak_memory_bytes for r in results), strict=True)]
        return SampleResult(
            latent=last.latent,
            steps=sum(r.steps for r in results),
            seconds=sum(r.seconds for r in results) + sum(s for _, s in self.swaps),  # the swaps are the run's too
            first_step_seconds=results[0].first_step_seconds,
            step_cache=None,
            attention=last.attention,
            first_step_compiled=results[0].first_step_compiled,
            kernels=last.kernels,
            peak_memory_bytes=tuple(peaks),
            notes=tuple(notes),
        )


def _free_bytes(device: torch.device) -> int:
    """What the GPU can still give: the driver's free memory and what PyTorch's allocator holds unused."""
    unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + unused


def _offset_steps(on_step: StepCallback, offset: int, total: int) -> StepCallback:
    return lambda i, _total, x: on_step(i + offset, total, x)


def _offset_progress(
    on_progress: ProgressCallback, offset: int, total: int, before: float, first: float | None
) -> ProgressCallback:
    """Progress of a later expert's run as steps of the whole run (``first``: the whole run's first step)."""

    def report(p: StepProgress) -> None:
        first_step = p.first_step_s if first is None else first
        on_progress(dataclasses.replace(p, step=p.step + offset, total=total, elapsed_s=p.elapsed_s + before,
                                        first_step_s=first_step))  # fmt: skip

    return report
