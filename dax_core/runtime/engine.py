"""The sampling engine: one model built from a recipe, and the text-to-video sampling loop around it."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from ..accelerations import BuildEnv, apply_accelerations
from ..attention.schedule import DensityReport
from ..cache.base import StepCacheReport
from ..models.wan import WanModel
from ..parallel.config import ParallelConfig
from ..recipe import Recipe
from ..rules import STEP_CACHE_KINDS, check_low_noise_cfg, check_request, check_sampling, clip_ignored_note
from . import latents
from .noise_mask import check_noise_mask, frame_timesteps, masked, prepare_mask
from .progress import ProgressCallback, StepProgress, describe_model, preview_latent
from .samplers import DISCARDS_PENULTIMATE_SIGMA, SAMPLERS, final_sigma, inverse_noise_scaling, noise_scaling, sample
from .schedules import SCHEDULERS, check_sigmas, ksampler_sigmas, sigma_to_timestep, step_range

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, torch.Tensor], None]
"""Called after every step with (step index, total steps, current latent in model space)."""
BlockCallback = Callable[[int, int], None]
"""Called after every transformer block with (block index, blocks of the model)."""
FEW_STEPS = 8
"""Schedules of at most this many steps (a cut of a longer one is not one) run without their step cache: each step
carries at least an eighth of the denoising, and TeaCache's and MagCache's published settings are made for 20-50
steps, where a skipped step is one of many small ones. The sampler's summary says so."""


class StepListener(Protocol):
    """What keeps state per sampling step (a step cache, a self-attention schedule)."""

    def start_step(self, index: int) -> None: ...


@dataclass(frozen=True)
class SampleRequest:
    """One sampling job, with what ComfyUI's KSampler, KSamplerAdvanced and SamplerCustom offer.

    Text embeddings are [B or 1, L, C]; the latent is ComfyUI's (un-normalised) [B, C, T, H, W] (C: the model's
    latent channels, 16 or Wan2.2 TI2V's 48): empty (all zeros) for text-to-video, a VAE-encoded video with
    ``denoise`` < 1 for video-to-video, or a sampler's output with leftover noise to continue from ``start_at_step``.
    ``noise_mask``: the latent's ComfyUI noise mask (1 denoise, 0 keep; Wan22ImageToVideoLatent's keeps the encoded
    start image), applied as ComfyUI's samplers apply it (``noise_mask``).

    The sigmas run are ``sigmas`` when given (a SIGMAS input: ``steps``, ``shift``, ``scheduler`` and ``denoise`` do
    not apply), else KSampler's schedule for ``steps``, ``scheduler``, ``shift`` and ``denoise``; then
    KSamplerAdvanced's ``start_at_step`` / ``end_at_step`` cut (``run_sigmas``). ``add_noise`` False starts from the
    latent alone (zero noise); ``return_with_leftover_noise`` keeps the last sigma of a cut schedule instead of 0.
    ``seed`` gives the initial noise and the noise of ancestral samplers, as the noise seed does in ComfyUI.

    Image models (I2V, FLF2V) take each branch's image conditioning: ``positive_image`` / ``negative_image``, the
    channels concatenated to the noise (mask and image latent in model space, [B or 1, 20, T, H, W]:
    ``image_conditioning.concat_channels``), and ``positive_clip`` / ``negative_clip``, the CLIP-vision features
    [B or 1, N, clip_dim]; a text-to-video model takes none (``dax_core.rules.check_request``). An image model
    without CLIP (Wan2.2 I2V A14B) takes the image channels alone: CLIP features given to it are not used, as in
    ComfyUI, and the run's notes say so.

    ``low_noise_cfg``: a two-expert model's guidance for its low-noise expert's steps (the official Wan2.2 A14B
    configurations guide the two experts differently); None: ``cfg`` for both. A single model refuses it.
    """

    positive: torch.Tensor
    negative: torch.Tensor | None
    latent: torch.Tensor
    seed: int
    steps: int
    cfg: float
    shift: float = 8.0
    sampler: str = "wan_unipc"
    scheduler: str = "simple"
    denoise: float = 1.0
    start_at_step: int = 0
    end_at_step: int | None = None
    add_noise: bool = True
    return_with_leftover_noise: bool = False
    sigmas: torch.Tensor | None = None
    positive_image: torch.Tensor | None = None
    negative_image: torch.Tensor | None = None
    positive_clip: torch.Tensor | None = None
    negative_clip: torch.Tensor | None = None
    noise_mask: torch.Tensor | None = None
    low_noise_cfg: float | None = None

    def __post_init__(self) -> None:
        check_sampling(self, SAMPLERS, SCHEDULERS)
        if self.noise_mask is not None:
            check_noise_mask(self.noise_mask, self.latent.shape)
        if self.sigmas is not None:
            check_sigmas(self.sigmas, "the sigmas input")
        self.run_sigmas()  # a bad step range fails here, before any step

    def schedule_sigmas(self) -> torch.Tensor:
        """The float32 CPU sigmas of the whole schedule, before the start/end cut (see the class docstring)."""
        if self.sigmas is not None:
            return self.sigmas.detach().to("cpu", torch.float32)
        discard = self.sampler in DISCARDS_PENULTIMATE_SIGMA
        return ksampler_sigmas(
            self.scheduler, self.steps, self.shift, denoise=self.denoise, discard_penultimate=discard
        )

    def run_sigmas(self) -> torch.Tensor:
        """The float32 CPU sigmas this request runs, ``steps run + 1`` of them (see the class docstring)."""
        return step_range(self.schedule_sigmas(), self.start_at_step, self.end_at_step, self.return_with_leftover_noise)

    @property
    def uses_cfg(self) -> bool:
        """Whether the unconditional branch runs (cfg 1 is the conditional prediction alone), in any step."""
        return self.cfg != 1.0 or self.low_noise_cfg not in (None, 1.0)

    def batches_branches(self, takes_clip: bool = True) -> bool:
        """Whether both guidance branches run in one forward: their text embeddings batch when of equal length, and
        so must the CLIP-vision features of a model that takes them (``takes_clip``; a model without CLIP ignores
        them)."""
        if not self.uses_cfg or self.negative is None or self.negative.shape[1] != self.positive.shape[1]:
            return False
        clips = (self.positive_clip, self.negative_clip)
        return not takes_clip or None in clips or clips[0].shape[1] == clips[1].shape[1]

    @property
    def has_image(self) -> bool:
        """Whether any image conditioning (concatenated channels or CLIP-vision features) is given."""
        image = (self.positive_image, self.negative_image, self.positive_clip, self.negative_clip)
        return any(t is not None for t in image)


GIB = 1024**3


@dataclass(frozen=True)
class SampleResult:
    latent: torch.Tensor  # ComfyUI's (un-normalised) latent, float32 on the CPU
    steps: int
    seconds: float  # wall time of the sampling loop
    first_step_seconds: float  # includes compilation when the model is compiled
    step_cache: StepCacheReport | None = None  # what a step cache (TeaCache, MagCache) skipped, per branch
    attention: DensityReport | None = None  # the self-attention density of each step (radial attention)
    first_step_compiled: bool = False  # the first step compiled the transformer block
    kernels: tuple[str, ...] = ()  # what the model ran: attention kernels, linear layers, compilation (describe_model)
    peak_memory_bytes: tuple[int, ...] = ()
    """Per GPU (rank order), the most memory PyTorch's allocator held during the run; empty off CUDA."""
    notes: tuple[str, ...] = ()  # what else the user should know: the LoRAs merged, a step cache left out

    def summary_lines(self) -> list[str]:
        text = f"{self.steps} step{'s' if self.steps != 1 else ''} in {self.seconds:.1f} s"
        if self.steps > 1:
            later = (self.seconds - self.first_step_seconds) / (self.steps - 1)
            compiled = ", compilation included" if self.first_step_compiled else ""
            text += f" (first step {self.first_step_seconds:.1f} s{compiled}, then {later:.2f} s/step)"
        lines = [text]
        if self.step_cache is not None:
            lines.append(self.step_cache.summary())
        if self.attention is not None:
            lines.append(self.attention.summary())
        lines += self.kernels
        if self.peak_memory_bytes:
            per_gpu = ", ".join(f"{b / GIB:.1f}" for b in self.peak_memory_bytes)
            lines.append(f"peak GPU memory: {per_gpu} GiB" + (" (per GPU)" if len(self.peak_memory_bytes) > 1 else ""))
        return [*lines, *self.notes]

    def summary(self) -> str:
        return "; ".join(self.summary_lines())


class WanEngine:
    """A Wan model built from a recipe on one device, and the sampling loop."""

    def __init__(self, model: WanModel, recipe: Recipe, device: torch.device | str) -> None:
        """Wrap an already built (and accelerated) model; ``WanEngine.build`` makes one from a recipe."""
        self.model = model
        self.recipe = recipe
        self.device = torch.device(device)
        self.parallel: ParallelConfig | None = None
        """How the model's forward is split over ranks (set with sequence parallelism), for ``check_request``."""
        self.kernels = describe_model(model)
        """What the model runs (attention kernels, linear layers, compilation), read once: the report of every run."""
        self.lora_params: frozenset[str] = frozenset()
        """The parameters the recipe's LoRAs changed (``use_loras_of`` reads them again)."""
        self.lora_lines: tuple[str, ...] = ()
        """What the LoRAs did, for the summary of every run."""
        self._unusable: str | None = None

    @classmethod
    def build(
        cls, recipe: Recipe, device: torch.device | str, sequence_group: dist.ProcessGroup | None = None
    ) -> WanEngine:
        """Load the recipe's weights on ``device`` and apply its accelerations.

        ``sequence_group``: the process group the model's tokens will be split over (sequence parallelism), or
        None for one process. The accelerations see it: a step cache reduces its decision sums over it, and
        quantization refuses per-tensor activation scales, which a split would change.
        """
        from ..lora.merge import recipe_deltas  # the weight loader and the LoRA merge are needed only here
        from ..models.loading import load_wan_model

        device = torch.device(device)
        world = 1 if sequence_group is None else sequence_group.size()
        start = time.perf_counter()
        deltas = recipe_deltas(recipe)  # the LoRA files are checked before any weight is read
        with deltas:
            model = load_wan_model(
                recipe.weights,
                device=device,
                weight_dtype=recipe.weight_dtype,
                compute_dtype=recipe.torch_compute_dtype,
                deltas=deltas if deltas.params else None,
                expect=recipe.model,
            ).eval()
        apply_accelerations(model, recipe, BuildEnv(device, world, sequence_group))
        log.info("built %s on %s in %.1f s", model.spec.name, device, time.perf_counter() - start)
        engine = cls(model, recipe, device)
        engine.lora_params, engine.lora_lines = deltas.params, tuple(deltas.summary_lines())
        return engine

    @property
    def usable(self) -> bool:
        """False after ``use_loras_of`` failed half-way through the weights: build the engine again."""
        return self._unusable is None

    def can_use_loras_of(self, recipe: Recipe) -> bool:
        """Whether ``use_loras_of(recipe)`` can serve ``recipe`` on this model (else build it again)."""
        from ..lora.merge import can_merge_again

        same = _built_part(recipe) == _built_part(self.recipe)
        return same and self.usable and (recipe.loras == self.recipe.loras or can_merge_again(self.model))

    def use_loras_of(self, recipe: Recipe) -> None:
        """Take ``recipe``'s LoRAs (other strengths, other files, or none) on this built model, without building it
        again or compiling it again: the parameters the old or the new LoRAs touch are read again from the weights
        file and merged anew (``dax_core.lora.merge``), so the model equals one built from ``recipe``.

        ``recipe`` must differ from the engine's recipe in its LoRAs and step caches only; its step caches are left
        to ``use_step_caches_of``. The LoRA files are checked before the first parameter is written; a failure after
        that leaves the engine unusable (``usable``).
        """
        from ..lora.merge import merge_again, recipe_deltas
        from ..models.loading import inspect_weights

        if _built_part(recipe) != _built_part(self.recipe):
            raise ValueError("use_loras_of takes a recipe that differs from the engine's in its LoRAs and step caches")
        if recipe.loras == self.recipe.loras:
            return
        deltas = recipe_deltas(recipe, self.model.spec)
        inspect_weights(self.recipe.weights)  # the weights file still there and whole, before the first write
        try:
            merge_again(self.model, self.recipe, deltas, self.lora_params, self.device)
        except BaseException as e:
            self._unusable = f"taking new LoRAs failed half-way ({type(e).__name__}: {e})"
            raise
        self.lora_params, self.lora_lines = deltas.params, tuple(deltas.summary_lines())
        self.recipe = dataclasses.replace(self.recipe, loras=recipe.loras)

    def use_step_caches_of(self, recipe: Recipe) -> None:
        """Take ``recipe``'s step cache (TeaCache, MagCache, or none) on this built model, without rebuilding it.

        ``recipe`` must differ from the engine's own recipe in its step caches only. In one process, where no
        other rank must agree, a new threshold then costs nothing instead of a reload of the weights.

        If the new step cache cannot be applied, the engine keeps its previous one and its recipe: the recipe
        always names the cache the model runs with (an equal recipe is taken to need no change).
        """
        if recipe.without(STEP_CACHE_KINDS) != self.recipe.without(STEP_CACHE_KINDS):
            raise ValueError("use_step_caches_of takes a recipe that differs from the engine's in its step caches only")
        if recipe == self.recipe:
            return
        previous = self.model.step_cache
        self.model.step_cache = None  # a step cache refuses a model that already has one
        try:
            for acc in recipe.accelerations:
                if acc.kind in STEP_CACHE_KINDS:
                    acc.apply(self.model, BuildEnv(self.device))
        except BaseException:
            self.model.step_cache = previous
            raise
        self.recipe = dataclasses.replace(recipe)  # a copy: the caller's object must stay free to be collected

    def _text(self, emb: torch.Tensor, batch: int) -> torch.Tensor:
        emb = emb.to(self.device, self.model.compute_dtype)
        return emb.expand(batch, -1, -1) if emb.shape[0] == 1 else emb

    def _image(self, channels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if channels is None:
            return None
        channels = channels.to(self.device, torch.float32)
        return channels.expand(batch, -1, -1, -1, -1) if channels.shape[0] == 1 else channels

    def _clip(self, features: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if features is None or not self.model.spec.takes_clip:  # a model without CLIP does not use them
            return None
        features = features.to(self.device, self.model.compute_dtype)
        return features.expand(batch, -1, -1) if features.shape[0] == 1 else features

    def denoiser(
        self, req: SampleRequest, mask: torch.Tensor | None = None
    ) -> Callable[[torch.Tensor, float], torch.Tensor]:
        """(x, sigma) -> denoised x0 with classifier-free guidance, the two branches batched when they fit.

        Every model call names the CFG branch of each batch row ("cond" / "uncond") for the model's step cache.
        ``mask``: the latent's prepared noise mask; a model with per-token timesteps gets one per latent frame from
        it (the mask's blending of input and output is ``noise_mask.masked``'s).
        """
        batch = req.latent.shape[0]
        use_cfg = req.uses_cfg
        pos = self._text(req.positive, batch)
        neg = self._text(req.negative, batch) if use_cfg else None
        batched = req.batches_branches(self.model.spec.takes_clip)
        context = torch.cat([pos, neg]) if batched else pos
        pos_image, pos_clip = self._image(req.positive_image, batch), self._clip(req.positive_clip, batch)
        neg_image = self._image(req.negative_image, batch) if use_cfg else None
        neg_clip = self._clip(req.negative_clip, batch) if use_cfg else None
        image = _rows(pos_image, neg_image) if batched else pos_image
        clip = _rows(pos_clip, neg_clip) if batched else pos_clip
        model = self.model
        cond, uncond = ("cond",) * batch, ("uncond",) * batch
        per_frame = mask is not None and model.spec.per_token_timesteps

        def velocity(
            x: torch.Tensor,
            sigma: float,
            ctx: torch.Tensor,
            branches: tuple[str, ...],
            image: torch.Tensor | None,
            clip: torch.Tensor | None,
        ) -> torch.Tensor:
            n = ctx.shape[0] // x.shape[0]
            x_in = x.repeat(n, 1, 1, 1, 1) if n > 1 else x
            if image is not None:  # the image channels after the noise, as ComfyUI's c_concat
                x_in = torch.cat([x_in, image.to(x_in.dtype)], dim=1)
            if per_frame:
                t = frame_timesteps(mask, sigma_to_timestep(sigma)).repeat(n, 1)
            else:
                t = torch.full((x_in.shape[0],), sigma_to_timestep(sigma), device=self.device, dtype=torch.float32)
            return model(x_in, t, ctx, branches=branches, clip_fea=clip).float()

        def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
            if batched:
                v_cond, v_uncond = velocity(x, sigma, context, cond + uncond, image, clip).chunk(2)
            else:
                v_cond = velocity(x, sigma, pos, cond, pos_image, pos_clip)
                v_uncond = velocity(x, sigma, neg, uncond, neg_image, neg_clip) if use_cfg else None
            x0_cond = x - sigma * v_cond
            if v_uncond is None:
                return x0_cond
            x0_uncond = x - sigma * v_uncond
            return x0_uncond + (x0_cond - x0_uncond) * req.cfg

        return denoise

    @torch.inference_mode()
    def sample(
        self,
        req: SampleRequest,
        on_step: StepCallback | None = None,
        on_block: BlockCallback | None = None,
        on_progress: ProgressCallback | None = None,
        preview: bool = False,
    ) -> SampleResult:
        """Run the sampling loop and return ComfyUI's (un-normalised) latent with the timing.

        ``on_block`` is called after every transformer block of every forward of this run (it may raise to stop the
        run there, e.g. a cancel agreed by every rank of a worker group mid-step). ``on_progress`` gets a
        ``StepProgress`` after every step (before ``on_step``), with a preview latent of the current denoised
        prediction when ``preview`` is set; on CUDA the device is synchronized for it each step. A schedule of at most
        ``FEW_STEPS`` steps computes every step, without the model's step cache (the summary says so).
        """
        if not self.usable:
            raise RuntimeError(f"this engine is unusable: {self._unusable}; build it again")
        check_request(req, self.model.spec, self.parallel)
        check_low_noise_cfg(self.recipe, req)
        clip_note = clip_ignored_note(req, self.model.spec)
        notes = (*self.lora_lines, clip_note) if clip_note else self.lora_lines
        cache = self.model.step_cache
        steps = req.steps if req.sigmas is None else len(req.sigmas) - 1  # of the whole schedule, not of a cut
        if cache is None or steps > FEW_STEPS:
            return self._sample(req, on_step, on_block, on_progress, preview, notes)
        note = (
            f"{cache.name} is off for this {steps}-step schedule: at {FEW_STEPS} steps or fewer every step carries "
            f"too much of the denoising to be skipped (step caches are made for 20-50 steps), so every step ran; "
            f"remove the {cache.name} node for few-step (distilled) sampling"
        )
        log.warning(note)
        self.model.step_cache = None
        try:
            return self._sample(req, on_step, on_block, on_progress, preview, (*notes, note))
        finally:
            self.model.step_cache = cache

    def _sample(
        self,
        req: SampleRequest,
        on_step: StepCallback | None,
        on_block: BlockCallback | None,
        on_progress: ProgressCallback | None,
        preview: bool,
        notes: tuple[str, ...],
    ) -> SampleResult:
        sigmas = req.run_sigmas()
        if req.add_noise:
            noise = latents.initial_noise(req.latent.shape, req.seed).to(self.device)
        else:
            noise = torch.zeros(req.latent.shape, dtype=torch.float32, device=self.device)
        image = req.latent.to(self.device, torch.float32)
        channels = self.model.spec.latent_channels
        if torch.count_nonzero(image) > 0:  # ComfyUI leaves an empty latent un-normalised
            image = latents.normalize(image, channels)
        x = noise_scaling(sigmas[0], noise, image)
        steps = len(sigmas) - 1
        cache = self.model.step_cache
        mask = None if req.noise_mask is None else prepare_mask(req.noise_mask, image.shape, self.device)
        denoise = self.denoiser(req, mask)
        if mask is not None:
            denoise = masked(denoise, mask, image, noise, keep_clean=self.model.spec.per_token_timesteps)
        compiled = self.model.compiled
        shapes_before = len(compiled.shapes) if compiled is not None else 0
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        latest: list[torch.Tensor] = []  # the last denoised prediction, when a preview is wanted
        if on_progress is not None and preview:
            denoise = _remembering(denoise, latest)
        start = time.perf_counter()
        first_step_end: list[float] = []
        first_step_compiled: list[bool] = []

        def step_done(i: int, total: int, x_now: torch.Tensor) -> None:
            if cuda and (i == 0 or on_progress is not None):
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            if i == 0:
                first_step_end.append(now)
                first_step_compiled.append(compiled is not None and len(compiled.shapes) > shapes_before)
                if first_step_compiled[0]:
                    log.info("first step, compilation included: %.1f s", first_step_end[0] - start)
            if on_progress is not None:
                skipped = cache.skipped_so_far() if cache is not None else ()
                on_progress(
                    StepProgress(
                        step=i + 1,
                        total=total,
                        elapsed_s=now - start,
                        first_step_s=first_step_end[0] - start,
                        cache=cache.name if cache is not None else None,
                        skipped=skipped,
                        preview=preview_latent(latest[0]) if latest else None,
                    )
                )
            if on_step is not None:
                on_step(i, total, x_now)

        report = attention = None
        layer_schedule = self.model.self_attention_schedule
        per_run = [c for c in (cache, layer_schedule) if c is not None]
        if cache is not None:
            cache.start_run(steps)  # a new run: nothing of an earlier prompt or workflow is reused
        if layer_schedule is not None:  # its dense steps count from the schedule's start, not the cut's
            layer_schedule.start_run(steps, first_step=req.start_at_step)
        if per_run:
            denoise = _announcing_steps(denoise, per_run)
        self.model.block_hook = on_block
        try:
            x = sample(req.sampler, denoise, x, sigmas, seed=req.seed, callback=step_done)
        finally:
            self.model.block_hook = None
            if cache is not None:
                report = cache.end_run()  # also after a cancelled run: the residuals are released
            if layer_schedule is not None:
                attention = layer_schedule.end_run()
        if cuda:
            torch.cuda.synchronize(self.device)
        end = time.perf_counter()
        x = inverse_noise_scaling(final_sigma(req.sampler, sigmas), x.float())
        result = SampleResult(
            latents.denormalize(x, channels).cpu(),
            steps,
            end - start,
            first_step_end[0] - start,
            report,
            attention,
            first_step_compiled=first_step_compiled[0],
            kernels=self.kernels,
            peak_memory_bytes=(torch.cuda.max_memory_allocated(self.device),) if cuda else (),
            notes=notes,
        )
        schedule = "sigmas input" if req.sigmas is not None else req.scheduler
        log.info("%s: %s (%s/%s, cfg %.2f)", self.model.spec.name, result.summary(), req.sampler, schedule, req.cfg)
        if report is not None:
            for branch in report.branches:
                log.info("%s %s steps: %s (C computed, S skipped)", report.cache, branch.name, branch.pattern)
        return result


def _rows(cond: torch.Tensor | None, uncond: torch.Tensor | None) -> torch.Tensor | None:
    """The two branches' rows of one batched forward (None when the model takes no such input)."""
    return None if cond is None else torch.cat([cond, uncond])


def _remembering(
    denoise: Callable[[torch.Tensor, float], torch.Tensor], latest: list[torch.Tensor]
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The denoiser, keeping its last prediction in ``latest`` (a reference, no copy) for the step's preview."""

    def run(x: torch.Tensor, sigma: float) -> torch.Tensor:
        x0 = denoise(x, sigma)
        latest[:] = [x0]
        return x0

    return run


def _built_part(recipe: Recipe) -> Recipe:
    """What a built engine cannot take in place: the recipe without its LoRAs and step caches."""
    return recipe.without_loras().without(STEP_CACHE_KINDS)


def _announcing_steps(
    denoise: Callable[[torch.Tensor, float], torch.Tensor], listeners: list[StepListener]
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The denoiser, telling the step cache and the attention schedule which step each call belongs to (the
    samplers call it once per step)."""
    counter = itertools.count()

    def run(x: torch.Tensor, sigma: float) -> torch.Tensor:
        index = next(counter)
        for listener in listeners:
            listener.start_step(index)
        return denoise(x, sigma)

    return run
