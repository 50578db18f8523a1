"""One sampler run for an application (ComfyUI's DAX sampler nodes call ``Sampling.run``, nothing else of the engine).

Every check comes first (``prepare``: the rules between levers, the request against the model, the GPU layout),
before any engine is touched, so a refused run leaves a warm engine or worker group as it was. Then the engine for the
recipe: built once and kept while its owner recipe lives (``EngineCache``: the last recipe upstream of every setting
a built engine takes in place, which the application keeps cached while only those settings change), on one GPU in
this process or as a worker group (one process per GPU, kept between prompts); it takes the recipe's LoRAs and step
caches and samples.

What the application provides is a ``Host``: its device, making room on a GPU for a model (ComfyUI unloads its own
models), registering a built engine as loaded (so that the application's own unloading closes it), its cancel flag.
``dax_core`` never imports the application: nodes/comfy_host.py is ComfyUI's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..models.spec import WanSpec
from ..recipe import Recipe
from ..rules import STEP_CACHE_KINDS, check_run
from .distributed import build_engine, parallel_layout
from .engine import SampleRequest, SampleResult, WanEngine
from .engine_cache import EngineCache, expert_family
from .expert_pair import ExpertPair
from .group import GroupConfig, SampleCancelled, StartCancelled, WorkerGroup
from .liveness import Liveness
from .model_info import recipe_spec
from .progress import StepProgress

log = logging.getLogger(__name__)

CPU_WORKERS_MAX = 8
"""The most worker processes a CPU-only application offers (a group of CPU workers is for testing)."""
MEMORY_MARGIN = 1.2
"""Room asked for beyond a model's weights: its activations and workspace at video sizes."""


class Loaded(Protocol):
    """A built engine as the host registered it: ``engine`` is None once the host unloaded (closed) it."""

    engine: Any

    def close(self) -> None: ...


class Host(Protocol):
    """What the application around the engine provides."""

    def device(self) -> torch.device: ...

    def make_room(self, size: float, device: torch.device, keep: Sequence[Loaded] = ()) -> None:
        """Free ``size`` bytes on ``device`` of the application's own models, keeping ``keep``."""

    def empty_cache(self) -> None: ...

    def register(self, engine: WanEngine | ExpertPair | WorkerGroup, size: int) -> Loaded:
        """Tell the application that ``engine`` holds ``size`` bytes of its device; its unloading closes it."""

    def interrupted(self) -> bool:
        """Whether the user cancelled the run."""

    def raise_if_interrupted(self) -> None:
        """Raise the application's own cancellation, if the user cancelled."""


@dataclass(frozen=True)
class Placement:
    """Where a run happens: ``count`` devices from ``device``, the split over them, whether it was up already."""

    device: torch.device
    count: int = 1
    layout: str = ""
    group: bool = False
    reused: bool = False


class RunStatus(Protocol):
    """What a run tells the user while it goes (ComfyUI's progress text, bar and previews)."""

    @property
    def previews(self) -> bool:
        """Whether the application wants a small preview latent with each step's progress."""

    def start(self, steps: int, latent_channels: int) -> None:
        """The run passed its checks: it takes ``steps`` steps of a latent of ``latent_channels`` channels."""

    def show(self, text: str) -> None: ...

    def placed(self, where: Placement) -> None: ...

    def on_progress(self, progress: StepProgress) -> None: ...


@dataclass(frozen=True)
class GroupOptions:
    """How a run on several GPUs splits the work (the Multi-GPU Sampler's widgets) and how it is watched."""

    mode: str = "ulysses"
    ulysses_degree: int = 2
    cfg_parallel: bool = False
    overlap: bool = True
    liveness: Liveness = field(default_factory=Liveness)


def engine_bytes(recipe: Recipe, spec: WanSpec) -> int:
    """The device memory a recipe's engine asks the host for: its weights (both experts of a pair) and a margin."""
    per_param = {"fp8_e4m3fn": 1, "fp32": 4}.get(recipe.weight_dtype, 2)
    experts = 2 if recipe.is_expert_pair else 1
    return int(spec.parameter_count() * per_param * MEMORY_MARGIN * experts)


def owner_of(recipe: Recipe, takes_in_place: Callable[[Recipe], bool]) -> Recipe:
    """The recipe whose lifetime keeps the engine: the last one upstream of every node whose change a built engine
    takes in place, which the application keeps cached while only those nodes' widgets change."""
    return next((r for r in recipe.lineage() if not takes_in_place(r)), recipe)


def _has_step_cache(recipe: Recipe) -> bool:
    return any(a.kind in STEP_CACHE_KINDS for a in recipe.accelerations)


def _visible_devices() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")


class Sampling:
    """The engines of one application and the runs on them."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.engines: EngineCache[Loaded] = EngineCache(on_release=host.empty_cache)

    def max_processes(self) -> int:
        """The most processes a run may use here: the visible GPUs (CPU workers on a CPU-only host)."""
        device = self.host.device()
        if device.type == "cuda":
            return max(1, torch.cuda.device_count())
        return CPU_WORKERS_MAX if device.type == "cpu" else 1

    def group_config(self, gpus: int, options: GroupOptions) -> GroupConfig:
        device = self.host.device()
        if device.type == "cuda":
            visible = torch.cuda.device_count()
            if gpus > visible:
                raise ValueError(
                    f"gpus = {gpus} but only {visible} GPU(s) are visible (CUDA_VISIBLE_DEVICES="
                    f"{_visible_devices() or 'unset'}): lower gpus or make more GPUs visible"
                )
        elif device.type != "cpu":
            raise ValueError(
                f"the worker group runs on CUDA GPUs (or CPUs, for testing), not {device.type}: use gpus = 1"
            )
        layout = parallel_layout(gpus, options.mode, options.ulysses_degree, options.cfg_parallel, options.overlap)
        return GroupConfig(nproc_per_node=gpus, device=device.type, parallel=layout, liveness=options.liveness)

    def prepare(
        self, recipe: Recipe, request: SampleRequest, gpus: int, options: GroupOptions | None = None
    ) -> tuple[WanSpec, GroupConfig | None]:
        """Every check of the run, before any engine is touched: a warm group stays as it is and no new one starts
        for a request or a recipe the ranks would refuse. The model's spec, and the group's config (None: one GPU)."""
        spec = recipe_spec(recipe)
        config = None if gpus == 1 else self.group_config(gpus, options or GroupOptions())
        check_run(recipe, spec, request, None if config is None else config.parallel)
        return spec, config

    def run(
        self, recipe: Recipe, request: SampleRequest, gpus: int, options: GroupOptions | None, status: RunStatus
    ) -> SampleResult:
        """Check, then sample ``request`` here (gpus = 1) or in a worker group, telling ``status`` how it goes."""
        spec, config = self.prepare(recipe, request, gpus, options)
        steps = len(request.run_sigmas()) - 1  # the steps this run takes (a start/end cut or denoise changes them)
        status.start(steps, spec.latent_channels)
        if config is None:
            return self._sample_here(recipe, spec, request, status)
        return self._sample_in_group(recipe, spec, request, steps, config, status)

    def _sample_here(self, recipe: Recipe, spec: WanSpec, request: SampleRequest, status: RunStatus) -> SampleResult:
        # A changed TeaCache/MagCache setting or LoRA (file, strength) is taken by the built model, with no build
        # from scratch: the engine is keyed without step caches and LoRAs and kept alive by the last recipe upstream
        # of those nodes.
        to_build = recipe.without(STEP_CACHE_KINDS)
        built: list[Loaded] = []

        def build(_key: Recipe) -> Loaded:
            status.show("loading the model")
            device, size = self.host.device(), engine_bytes(to_build, spec)  # step caches do not change the spec
            self.host.make_room(size, device)  # the application's own models make room for ours first
            built.append(self.host.register(build_engine(to_build, device, None), size))  # built with its LoRAs
            return built[-1]

        loaded = self.engines.get(
            recipe,
            build,
            built_from=to_build.without_loras(),
            owner=owner_of(recipe, lambda r: _has_step_cache(r) or bool(r.loras)),
            valid=lambda e: e.engine is not None and e.engine.can_use_loras_of(recipe),  # None: the host unloaded it
            family=expert_family(recipe),
        )
        engine = loaded.engine
        assert isinstance(engine, (WanEngine, ExpertPair))
        engine.use_loras_of(recipe)
        engine.use_step_caches_of(recipe)
        device = engine.device
        status.placed(Placement(device, 1, "1 GPU" if device.type == "cuda" else "", reused=not built))

        def on_step(i: int, total: int, _x: torch.Tensor) -> None:
            self.host.raise_if_interrupted()  # a cancel stops between steps

        return engine.sample(request, on_step=on_step, on_progress=status.on_progress, preview=status.previews)

    def _free_devices(self, config: GroupConfig, keep: Sequence[Loaded] = ()) -> None:
        """The application's own models (text encoder, VAE...) leave the GPUs the group uses (``keep`` stays: this
        group, and the group of the other expert of a Wan2.2 model)."""
        if config.device != "cuda":
            return
        for index in range(config.nproc_per_node):
            self.host.make_room(1e30, torch.device("cuda", index), keep)
        self.host.empty_cache()

    def _sample_in_group(
        self,
        recipe: Recipe,
        spec: WanSpec,
        request: SampleRequest,
        steps: int,
        config: GroupConfig,
        status: RunStatus,
    ) -> SampleResult:
        # a change of recipe, layout or GPU set (the first gpus of CUDA_VISIBLE_DEVICES) starts a new group; the
        # liveness limits only change how the owner watches it
        same_group = dataclasses.replace(config, liveness=Liveness())
        variant = f"{same_group}|CUDA_VISIBLE_DEVICES={_visible_devices()}"
        started: list[WorkerGroup] = []
        family = expert_family(recipe, variant)

        def start(r: Recipe) -> Loaded:
            status.show(f"starting a worker group of {config.world_size} processes: each loads the model")
            self._free_devices(config, keep=self.engines.family(family))  # the other expert's group stays
            group = WorkerGroup(r, config, should_cancel=self.host.interrupted)  # a cancel works while it starts
            started.append(group)
            return self.host.register(group, engine_bytes(r, spec))

        # New LoRAs (files, strengths) are taken by the running group (WorkerGroup.use_recipe): it is keyed without
        # them
        whole = dataclasses.replace(recipe)  # started with its LoRAs; a copy, so the group does not keep the caller's
        try:
            loaded = self.engines.get(
                recipe,
                lambda _key: start(whole),
                variant=variant,
                valid=lambda e: e.engine is not None and e.engine.alive,
                built_from=recipe.without_loras(),
                owner=owner_of(recipe, lambda r: bool(r.loras)),
                family=family,
            )
        except StartCancelled:
            self.host.raise_if_interrupted()  # the application's own "interrupted" outcome
            raise
        group = loaded.engine
        assert isinstance(group, WorkerGroup)
        # the application may have loaded its models again since the last prompt
        self._free_devices(config, keep=[loaded, *(e for e in self.engines.family(family) if e is not loaded)])
        log.info("Multi-GPU Sampler: %d steps on worker group %s (%d ranks)", steps, group.run_id, config.world_size)
        layout = config.parallel.describe() if config.parallel is not None else f"{config.world_size} processes"
        status.placed(Placement(torch.device(config.device), config.nproc_per_node, layout, True, not started))
        try:
            group.use_recipe(whole)
            return group.sample(
                request,
                should_cancel=self.host.interrupted,
                liveness=config.liveness,
                on_progress=status.on_progress,
                previews=status.previews,
            )
        except SampleCancelled:
            self.host.raise_if_interrupted()  # the application's own "interrupted" outcome
            raise
        finally:
            if not group.alive:  # failed, or taken down after a cancel: the cache drops it at the next prompt (a full
                loaded.close()  # garbage collection then, not now: a cancel must end the prompt within 2 s)
