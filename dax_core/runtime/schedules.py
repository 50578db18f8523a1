"""Flow-matching sigma schedules for Wan, computed exactly as ComfyUI computes them.

Wan is a rectified-flow model: ``x_sigma = (1 - sigma) * x0 + sigma * noise`` with ``sigma`` in [0, 1] and the
network conditioned on ``timestep = sigma * 1000``. ComfyUI (``ModelSamplingDiscreteFlow``, multiplier 1000) keeps a
1000-entry table ``sigma(t) = time_snr_shift(shift, t)`` for ``t = 1/1000 .. 1`` and its schedulers pick or
interpolate from it. The float32 operations below are the ones ComfyUI performs, in the same order, so the schedules
match it bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch

SCHEDULERS: tuple[str, ...] = ("simple", "normal", "sgm_uniform", "beta", "linear_quadratic")

MULTIPLIER = 1000
TRAIN_STEPS = 1000

# ComfyUI's beta scheduler (arXiv 2407.12173) places its steps at the quantiles of Beta(0.6, 0.6).
_BETA_AB = 0.6

SigmaLike = TypeVar("SigmaLike", float, torch.Tensor)


def time_snr_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """Wan/SD3 timestep shift ``shift*t / (1 + (shift-1)*t)``; identity for shift 1."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def sigma_to_timestep(sigma: SigmaLike) -> SigmaLike:
    """The model's timestep conditioning for a flow sigma (``sigma * 1000``)."""
    return sigma * MULTIPLIER


def _sigma(timestep: torch.Tensor, shift: float) -> torch.Tensor:
    return time_snr_shift(shift, timestep / MULTIPLIER)


def sigma_table(shift: float) -> torch.Tensor:
    """ComfyUI's float32 table of the 1000 training sigmas, ascending (``sigma_min`` first, ``sigma_max`` last)."""
    t = torch.arange(1, TRAIN_STEPS + 1, dtype=torch.float32) / TRAIN_STEPS
    return _sigma(t * MULTIPLIER, shift)


def _simple(table: torch.Tensor, steps: int, shift: float) -> list[float]:
    stride = len(table) / steps
    return [float(table[-(1 + int(i * stride))]) for i in range(steps)] + [0.0]


def _normal(table: torch.Tensor, steps: int, shift: float, sgm: bool = False) -> list[float]:
    start = sigma_to_timestep(table[-1])
    end = sigma_to_timestep(table[0])
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
        return [float(s) for s in _sigma(timesteps, shift)] + [0.0]
    # ComfyUI's rule: a table that already reaches ~0 ends on that value instead of an appended zero.
    if math.isclose(float(_sigma(end, shift)), 0, abs_tol=0.00001):
        return [float(s) for s in _sigma(torch.linspace(start, end, steps + 1), shift)]
    return [float(s) for s in _sigma(torch.linspace(start, end, steps), shift)] + [0.0]


def _sgm_uniform(table: torch.Tensor, steps: int, shift: float) -> list[float]:
    return _normal(table, steps, shift, sgm=True)


def _log_beta_fn(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta (modified Lentz), valid for x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        for coef in (even, odd):
            d = 1.0 + coef * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + coef / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return result


def _beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)`` in float64."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _beta_cdf(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - _log_beta_fn(a, b)
    return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a


def _symmetric_beta_ppf(q: float, a: float) -> float:
    """Quantile of Beta(a, a) by bisection, solved on the lower tail and mirrored (the median is exactly 0.5)."""
    if q >= 1.0:
        return 1.0
    if q == 0.5:
        return 0.5
    if q > 0.5:
        return 1.0 - _symmetric_beta_ppf(1.0 - q, a)
    lo, hi = 0.0, 0.5
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            return mid
        if _beta_cdf(mid, a, a) < q:
            lo = mid
        else:
            hi = mid


def _beta(table: torch.Tensor, steps: int, shift: float) -> list[float]:
    last = len(table) - 1
    sigmas: list[float] = []
    previous = -1.0
    for i in range(steps):
        q = 1.0 - i * (1.0 / steps)  # numpy.linspace(0, 1, steps, endpoint=False), reversed
        t = float(round(_symmetric_beta_ppf(q, _BETA_AB) * last))  # round half to even, like numpy.rint
        if t != previous:  # ComfyUI drops consecutive duplicates (from ~139 steps on)
            sigmas.append(float(table[int(t)]))
        previous = t
    return [*sigmas, 0.0]


def _linear_quadratic(table: torch.Tensor, steps: int, shift: float) -> torch.Tensor:
    # Mochi's schedule (ComfyUI: linear_quadratic_schedule, threshold 0.025, half the steps linear); not shifted.
    threshold = 0.025
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2
        quadratic_steps = steps - linear_steps
        step_diff = linear_steps - threshold * steps
        quad = step_diff / (linear_steps * quadratic_steps**2)
        lin = threshold / linear_steps - 2 * step_diff / (quadratic_steps**2)
        const = quad * (linear_steps**2)
        ramp = [i * threshold / linear_steps for i in range(linear_steps)]
        ramp += [quad * (i**2) + lin * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - v for v in [*ramp, 1.0]]
    return torch.tensor(schedule, dtype=torch.float32) * table[-1]


_BUILDERS: dict[str, Callable[[torch.Tensor, int, float], list[float] | torch.Tensor]] = {
    "simple": _simple,
    "normal": _normal,
    "sgm_uniform": _sgm_uniform,
    "beta": _beta,
    "linear_quadratic": _linear_quadratic,
}


def flow_sigmas(scheduler: str, steps: int, shift: float) -> torch.Tensor:
    """ComfyUI's ``calculate_sigmas`` for a Wan (discrete flow, multiplier 1000) model with this ``shift``.

    Returns a float32 CPU tensor of ``steps + 1`` descending sigmas ending with 0.0. Two ComfyUI quirks are kept
    for parity: ``beta`` drops repeated sigmas at high step counts (from ~139 steps, so it may be shorter), and
    ``normal`` with a shift below ~0.01 ends on the table's smallest sigma (< 1e-5) instead of 0.
    """
    if scheduler not in _BUILDERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; valid schedulers: {', '.join(SCHEDULERS)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    shift = float(shift)
    sigmas = _BUILDERS[scheduler](sigma_table(shift), steps, shift)
    return torch.as_tensor(sigmas, dtype=torch.float32)


def check_sigmas(sigmas: torch.Tensor, what: str = "sigmas") -> None:
    """Raise ValueError, saying what is wrong, unless ``sigmas`` are flow sigmas a sampler can run: a 1-D tensor of
    at least 2 finite values (one step), strictly decreasing, in [0, 1], only the last one 0."""
    if not isinstance(sigmas, torch.Tensor) or not sigmas.is_floating_point():
        raise ValueError(f"{what} must be a floating-point torch.Tensor, got {type(sigmas).__name__}")
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"{what} must be a 1-D tensor with at least 2 values (one step), got shape {tuple(sigmas.shape)}"
        )
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError(f"{what} must all be finite, got {sigmas.tolist()}")
    if bool((sigmas[:-1] <= 0).any()) or float(sigmas[-1]) < 0:
        raise ValueError(f"{what} must be > 0 except the last one, which must be >= 0, got {sigmas.tolist()}")
    if float(sigmas[0]) > 1.0:
        raise ValueError(
            f"{what} of a flow model lie in [0, 1] (1 is pure noise), got {what}[0] = {float(sigmas[0])}: "
            "make them with a scheduler for this model (a ModelSamplingSD3 shift, not a Karras sigma range)"
        )
    rising = torch.nonzero(sigmas[1:] >= sigmas[:-1]).flatten()
    if rising.numel():
        i = int(rising[0]) + 1
        raise ValueError(
            f"{what} must be strictly decreasing, got {what}[{i}] = {float(sigmas[i])} >= "
            f"{what}[{i - 1}] = {float(sigmas[i - 1])}"
        )


def ksampler_sigmas(
    scheduler: str, steps: int, shift: float, *, denoise: float = 1.0, discard_penultimate: bool = False
) -> torch.Tensor:
    """The sigmas ComfyUI's KSampler runs for ``steps`` and ``denoise`` (``KSampler.set_steps``).

    ``denoise`` below 1 schedules ``int(steps / denoise)`` steps and keeps the last ``steps + 1`` sigmas (the low-
    noise tail: video-to-video starts from the input latent noised to the first of them). ``discard_penultimate``
    (ComfyUI does it for its UniPC): schedule one step more and drop the next-to-last sigma.
    """
    if not (math.isfinite(denoise) and 0 < denoise <= 1):
        raise ValueError(f"denoise must be in (0, 1], got {denoise!r}")

    def calculate(n: int) -> torch.Tensor:
        if not discard_penultimate:
            return flow_sigmas(scheduler, n, shift)
        sigmas = flow_sigmas(scheduler, n + 1, shift)
        return torch.cat([sigmas[:-2], sigmas[-1:]])

    if denoise > 0.9999:  # ComfyUI's threshold for a full schedule
        return calculate(steps)
    return calculate(int(steps / denoise))[-(steps + 1) :]


def step_range(sigmas: torch.Tensor, start_at_step: int, end_at_step: int | None, leftover_noise: bool) -> torch.Tensor:
    """The part of ``sigmas`` that steps ``start_at_step`` to ``end_at_step`` run, as ComfyUI's KSamplerAdvanced cuts
    it: ``sigmas[start:end + 1]``, the last sigma set to 0 unless ``leftover_noise`` (an ``end_at_step`` at or past
    the last step changes nothing). Raises ValueError when no step is left to run, where ComfyUI would return the
    input latent unchanged."""
    if start_at_step < 0 or (end_at_step is not None and end_at_step < 0):
        raise ValueError(f"start_at_step and end_at_step must be >= 0, got {start_at_step} and {end_at_step}")
    if end_at_step is not None and start_at_step >= end_at_step:
        raise ValueError(
            f"start_at_step {start_at_step} must be below end_at_step {end_at_step}: no step would run (ComfyUI's "
            "KSamplerAdvanced would return the latent unchanged; bypass the sampler for that)"
        )
    sigmas = sigmas.clone()
    if end_at_step is not None and end_at_step < len(sigmas) - 1:
        sigmas = sigmas[: end_at_step + 1]
        if not leftover_noise:
            sigmas[-1] = 0.0
    if start_at_step >= len(sigmas) - 1:
        raise ValueError(
            f"start_at_step {start_at_step} leaves none of the schedule's {len(sigmas) - 1} steps to run (ComfyUI's "
            "KSamplerAdvanced would return the latent unchanged): lower start_at_step, or bypass the sampler"
        )
    return sigmas[start_at_step:]


def expert_switch_step(sigmas: torch.Tensor, boundary: float) -> int:
    """The first step of the schedule ``sigmas`` (steps + 1 values) that a Wan2.2 A14B model's low-noise expert runs.

    The official rule (Wan2.2's generate code): a step whose timestep is at least ``boundary * 1000`` runs the
    high-noise expert. The timestep of a step is its starting sigma on the model's scale, ``sigma * 1000`` in float32 as
    the model is given it. Every step from the first one below the boundary runs the low-noise expert (a schedule's
    sigmas decrease; one that rises again past the boundary stays with the low-noise expert).
    Returns ``len(sigmas) - 1`` when every step is at or above the boundary.
    """
    if not 0.0 < boundary < 1.0:
        raise ValueError(f"an expert boundary is a sigma between 0 and 1, got {boundary!r}")
    timesteps = sigma_to_timestep(sigmas[:-1].to(torch.float32))
    below = (timesteps < boundary * MULTIPLIER).nonzero()
    return int(below[0, 0]) if len(below) else len(sigmas) - 1
