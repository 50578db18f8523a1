"""The samplers: ComfyUI's (its k-diffusion samplers and its UniPC, as they run on a flow model) and Wan's UniPC.

A sampler drives a :data:`Denoiser` (ComfyUI convention: ``(x, sigma) -> x0``; for a flow model
``x0 = x - sigma * velocity``) from ``sigmas[0]`` down to ``sigmas[-1]``, with one denoiser call per step. Each
name means what it means in ComfyUI, step for step, on a model with ComfyUI's CONST (flow) model sampling:

- ``euler``, ``dpmpp_2m``: k-diffusion's deterministic samplers.
- ``euler_ancestral``: k-diffusion's flow branch (``sample_euler_ancestral_RF``, eta 1): step down to
  ``sigma_next^2 / sigma``, then rescale and add fresh noise back up to ``sigma_next``.
- ``lcm``: predict x0, then noise it to the next sigma with the flow's noise scaling.
- ``uni_pc``, ``uni_pc_bh2``: ComfyUI's UniPC (``unipc_comfy``), which reads the sigmas as k-diffusion sigmas.
- ``wan_unipc``, ``wan_unipc_bh1``: Wan's own UniPC on the flow path (``unipc_wan``; bh2 is what Wan runs).

The ancestral samplers draw their noise as ComfyUI's ``default_noise_sampler`` does: a generator on the latent's
device seeded with the request's seed, made when the sampler starts, one ``randn`` of the latent per noised step.
Two chained sampler calls therefore each start that sequence again, as two chained ComfyUI samplers do.

Latents are updated in float32 (float64 when ``x`` is float64) and returned in ``x``'s dtype.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from .sampler_types import Denoiser, NoiseSampler, StepCallback
from .schedules import check_sigmas
from .unipc_comfy import sample_comfy_unipc, solver_sigmas
from .unipc_wan import sample_wan_unipc

logger = logging.getLogger(__name__)

NOISE_INJECTING: frozenset[str] = frozenset({"euler_ancestral", "lcm"})
"""Samplers that draw fresh noise during sampling (seeded from the request's seed)."""
DISCARDS_PENULTIMATE_SIGMA: frozenset[str] = frozenset({"uni_pc", "uni_pc_bh2"})
"""ComfyUI's KSampler schedules these with one step more and drops the next-to-last sigma (the SIGMAS input of a
custom sampler is used as given)."""


def _euler(
    denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler, callback: StepCallback | None
) -> torch.Tensor:
    # ComfyUI's sample_euler without churn; sigma and dt are 0-d tensors in the working dtype like ComfyUI's.
    total = len(sigmas) - 1
    for i in range(total):
        sigma = sigmas[i]
        x0 = denoise(x, float(sigma)).to(x.dtype)
        d = (x - x0) / sigma
        x = x + d * (sigmas[i + 1] - sigma)  # at sigma_next = 0 this lands on x0 up to rounding, as in ComfyUI
        if callback is not None:
            callback(i, total, x)
    return x


def _euler_ancestral(
    denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler, callback: StepCallback | None
) -> torch.Tensor:
    # ComfyUI's sample_euler_ancestral_RF with eta = 1, s_noise = 1 (the branch it takes for CONST model sampling)
    total = len(sigmas) - 1
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, float(sigma)).to(x.dtype)
        if float(sigma_next) == 0.0:
            x = x0
        else:
            sigma_down = sigma_next * (1 + (sigma_next / sigma - 1))
            alpha_next = 1 - sigma_next
            alpha_down = 1 - sigma_down
            renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
            ratio = sigma_down / sigma
            x = ratio * x + (1 - ratio) * x0
            x = (alpha_next / alpha_down) * x + noise() * renoise
        if callback is not None:
            callback(i, total, x)
    return x


def _dpmpp_2m(
    denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler, callback: StepCallback | None
) -> torch.Tensor:
    # ComfyUI's sample_dpmpp_2m: t = -log(sigma); first order on the first step and on the step to sigma 0
    total = len(sigmas) - 1
    old_x0: torch.Tensor | None = None
    for i in range(total):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, float(sigma)).to(x.dtype)
        t, t_next = sigma.log().neg(), sigma_next.log().neg()
        h = t_next - t
        scale = t_next.neg().exp() / t.neg().exp()
        if old_x0 is None or float(sigma_next) == 0.0:
            x = scale * x - (-h).expm1() * x0
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            blended = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
            x = scale * x - (-h).expm1() * blended
        old_x0 = x0
        if callback is not None:
            callback(i, total, x)
    return x


def _lcm(
    denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler, callback: StepCallback | None
) -> torch.Tensor:
    # ComfyUI's sample_lcm: x0, then the flow's noise scaling to the next sigma with fresh noise
    total = len(sigmas) - 1
    for i in range(total):
        x = denoise(x, float(sigmas[i])).to(x.dtype)
        if float(sigmas[i + 1]) > 0:
            x = noise_scaling(sigmas[i + 1], noise(), x)
        if callback is not None:
            callback(i, total, x)
    return x


def _unipc_of(
    solver: Callable[[Denoiser, torch.Tensor, torch.Tensor, bool, StepCallback | None], torch.Tensor], bh2: bool
) -> Callable[[Denoiser, torch.Tensor, torch.Tensor, NoiseSampler, StepCallback | None], torch.Tensor]:
    def run(
        denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: NoiseSampler, callback: StepCallback | None
    ) -> torch.Tensor:
        return solver(denoise, x, sigmas, bh2, callback)

    return run


_SAMPLE_FUNCTIONS = {
    "euler": _euler,
    "euler_ancestral": _euler_ancestral,
    "dpmpp_2m": _dpmpp_2m,
    "lcm": _lcm,
    "uni_pc": _unipc_of(sample_comfy_unipc, bh2=False),
    "uni_pc_bh2": _unipc_of(sample_comfy_unipc, bh2=True),
    "wan_unipc": _unipc_of(sample_wan_unipc, bh2=True),
    "wan_unipc_bh1": _unipc_of(sample_wan_unipc, bh2=False),
}
SAMPLERS: tuple[str, ...] = tuple(_SAMPLE_FUNCTIONS)


def noise_scaling(sigma: torch.Tensor | float, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The flow model's noised latent at ``sigma`` (ComfyUI's CONST ``noise_scaling``)."""
    sigma = torch.as_tensor(sigma, dtype=noise.dtype)
    return sigma * noise + (1.0 - sigma) * latent


def inverse_noise_scaling(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """What ComfyUI's CONST model sampling returns for a result at ``sigma``: ``x / (1 - sigma)`` (``x`` at 0).

    A latent with leftover noise leaves a sampler divided by ``1 - sigma`` and re-enters the next one through
    :func:`noise_scaling`, which multiplies its latent part by ``1 - sigma`` again.
    """
    return x / (1.0 - torch.as_tensor(sigma, dtype=x.dtype))


def final_sigma(name: str, sigmas: torch.Tensor) -> torch.Tensor:
    """The sigma ComfyUI takes the sampler's result to be at: the last sigma, except that ComfyUI's UniPC stops at
    0.001 instead of 0 (and ComfyUI's inverse noise scaling then divides by ``1 - 0.001``)."""
    if name in ("uni_pc", "uni_pc_bh2"):
        return solver_sigmas(sigmas)[-1]
    return sigmas[-1]


def default_noise_sampler(x: torch.Tensor, seed: int) -> NoiseSampler:
    """ComfyUI's ``default_noise_sampler``: a generator on ``x``'s device seeded with ``seed``; each call draws
    ``randn`` of ``x``'s shape and dtype from it."""
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    return lambda: torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)


def sample(
    name: str,
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    seed: int | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate ``x`` (the noised latent at ``sigmas[0]``) along ``sigmas`` with sampler ``name``.

    Returns the latent at :func:`final_sigma` (before ComfyUI's inverse noise scaling, which the caller applies).
    ``seed`` seeds the noise of the noise-injecting samplers (``NOISE_INJECTING``; ComfyUI passes the sampler's
    noise seed) and is required for them. ``callback(step_index, total_steps, x)`` runs after every step with the
    updated latent in the working precision (do not modify it in place); an exception it raises (e.g. a
    cancellation) propagates unchanged. ``sigmas`` must be flow sigmas: strictly decreasing, in [0, 1], only the
    last one may be 0.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    if not isinstance(sigmas, torch.Tensor):
        raise ValueError(f"sigmas must be a torch.Tensor, got {type(sigmas).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if name in NOISE_INJECTING and seed is None:
        raise ValueError(f"sampler {name!r} adds noise at every step: give the seed it draws that noise from")
    dtype = x.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    sigmas = sigmas.detach().to(device="cpu", dtype=work)
    check_sigmas(sigmas)
    logger.debug(
        "sampling %s: %d steps, sigma %.4f -> %.4f", name, len(sigmas) - 1, float(sigmas[0]), float(sigmas[-1])
    )
    x = x.to(work)
    noise = default_noise_sampler(x, seed) if name in NOISE_INJECTING else _no_noise
    with torch.no_grad():
        out = _SAMPLE_FUNCTIONS[name](denoise, x, sigmas, noise, callback)
    return out.to(dtype)


def _no_noise() -> torch.Tensor:
    raise AssertionError("a deterministic sampler asked for noise")
