"""ODE samplers over an explicit flow-matching sigma sequence: ComfyUI's Euler and Wan's UniPC.

A sampler drives a :data:`Denoiser` (ComfyUI convention: ``(x, sigma) -> x0``; for a flow model
``x0 = x - sigma * velocity``) from ``sigmas[0]`` down to ``sigmas[-1]``. One denoiser call per step; no noise is
injected. Latents are updated in float32 (float64 when ``x`` is float64) and returned in ``x``'s dtype.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]

SAMPLERS: tuple[str, ...] = ("euler", "uni_pc", "uni_pc_bh2")

# diffusers' guard against log(alpha = 0) at sigma = 1: a leading sigma within 1e-6 of 1 is lowered by 1e-6.
_UNIT_SIGMA_EPS = 1e-6


def _check_sigmas(sigmas: torch.Tensor) -> None:
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor with at least 2 values, got shape {tuple(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError("sigmas must all be finite")
    if bool((sigmas[:-1] <= 0).any()) or float(sigmas[-1]) < 0:
        raise ValueError("sigmas must be > 0 except the last one, which must be >= 0")


def _euler(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, callback: StepCallback | None) -> torch.Tensor:
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


def _lambda(sigma: float) -> float:
    """Half log-SNR ``log(alpha / sigma)`` of the flow path (``alpha = 1 - sigma``)."""
    if sigma == 0.0:
        return math.inf
    return math.log(1.0 - sigma) - math.log(sigma)


class _UniPCStep:
    """Scalar coefficients of one UniPC update from sigma ``s`` to sigma ``t`` (predict-x0 form)."""

    def __init__(self, sigma_s: float, sigma_t: float, bh2: bool) -> None:
        self.lambda_s = _lambda(sigma_s)
        self.h = _lambda(sigma_t) - self.lambda_s
        self.sigma_ratio = sigma_t / sigma_s
        self.alpha_t = 1.0 - sigma_t
        self.h_phi_1 = math.expm1(-self.h)  # e^{-h} - 1
        self.b_h = self.h_phi_1 if bh2 else -self.h

    def first_order(self, x: torch.Tensor, m0: torch.Tensor) -> torch.Tensor:
        """The DDIM (= flow Euler) part shared by predictor and corrector."""
        return self.sigma_ratio * x - (self.alpha_t * self.h_phi_1) * m0

    def rk(self, sigma_earlier: float) -> float:
        """Step ratio r_k = (lambda_earlier - lambda_s) / h of an older model output."""
        return (_lambda(sigma_earlier) - self.lambda_s) / self.h

    def corrector_weights(self, rk: float) -> tuple[float, float]:
        """Order-2 UniC weights: solve [[1, 1], [rk, 1]] @ rho = b with b_k from the phi_k(h) recursion."""
        hh = -self.h
        phi = self.h_phi_1 / hh - 1.0
        b1 = phi / self.b_h
        b2 = (phi / hh - 0.5) * 2.0 / self.b_h
        rho_old = (b1 - b2) / (1.0 - rk)
        return rho_old, b1 - rho_old


def _unipc(
    denoise: Denoiser, x: torch.Tensor, sigmas: list[float], bh2: bool, callback: StepCallback | None
) -> torch.Tensor:
    """UniPC, order 2, predict-x0, as diffusers' UniPCMultistepScheduler (flow sigmas, lower_order_final).

    Step i: evaluate x0_i at sigma_i, correct x_i with UniC (using x0_i and the order of the previous predictor),
    then predict x_{i+1} with UniP of order min(2, i + 1, steps - i): the first step warms up and the final one is
    first order (lower_order_final), which lands exactly on x0 when the last sigma is 0.
    """
    total = len(sigmas) - 1
    x0_history: list[torch.Tensor] = []  # the last two x0 predictions, oldest first
    x_prev = x
    order_prev = 0
    for i in range(total):
        x0 = denoise(x, sigmas[i]).to(x.dtype)
        if i > 0:
            step = _UniPCStep(sigmas[i - 1], sigmas[i], bh2)
            m0 = x0_history[-1]
            correction = x0 - m0
            if order_prev == 1:
                correction = 0.5 * correction
            else:
                rk = step.rk(sigmas[i - 2])
                rho_old, rho_new = step.corrector_weights(rk)
                correction = rho_old * ((x0_history[-2] - m0) / rk) + rho_new * correction
            x = step.first_order(x_prev, m0) - (step.alpha_t * step.b_h) * correction
        x0_history = [*x0_history[-1:], x0]
        order = min(2, i + 1, total - i)
        step = _UniPCStep(sigmas[i], sigmas[i + 1], bh2)
        m0 = x0_history[-1]
        x_prev = x
        x = step.first_order(x, m0)
        if order == 2:
            rk = step.rk(sigmas[i - 1])
            x = x - (step.alpha_t * step.b_h) * (0.5 * ((x0_history[-2] - m0) / rk))
        order_prev = order
        if callback is not None:
            callback(i, total, x)
    return x


def _flow_unipc_sigmas(sigmas: torch.Tensor) -> list[float]:
    values = sigmas.tolist()
    if values[0] > 1.0:
        raise ValueError(f"UniPC needs flow sigmas <= 1, got sigmas[0] = {values[0]}")
    for i in range(1, len(values)):
        if values[i] >= values[i - 1]:
            raise ValueError(
                "UniPC needs strictly decreasing sigmas, "
                f"got sigmas[{i}] = {values[i]} >= sigmas[{i - 1}] = {values[i - 1]}"
            )
    if abs(values[0] - 1.0) < _UNIT_SIGMA_EPS:
        # Stored in float32 as diffusers stores its schedule, so both see the same first sigma.
        values[0] = float(torch.tensor(values[0] - _UNIT_SIGMA_EPS, dtype=torch.float32))
    return values


def sample(
    name: str,
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Integrate ``x`` (the noised latent at ``sigmas[0]``) along ``sigmas`` with sampler ``name``.

    ``callback(step_index, total_steps, x)`` runs after every step with the updated latent in the working
    precision (do not modify it in place); an exception it raises (e.g. a cancellation) propagates unchanged.
    The UniPC samplers need strictly decreasing sigmas in [0, 1]; like diffusers they lower a leading sigma of 1 by
    1e-6 (the denoiser is called with that value) so that log(alpha / sigma) stays finite.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")
    if not isinstance(sigmas, torch.Tensor):
        raise ValueError(f"sigmas must be a torch.Tensor, got {type(sigmas).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    sigmas = sigmas.detach().to(device="cpu", dtype=work)
    _check_sigmas(sigmas)
    logger.debug(
        "sampling %s: %d steps, sigma %.4f -> %.4f", name, len(sigmas) - 1, float(sigmas[0]), float(sigmas[-1])
    )
    with torch.no_grad():
        if name == "euler":
            out = _euler(denoise, x.to(work), sigmas, callback)
        else:
            out = _unipc(denoise, x.to(work), _flow_unipc_sigmas(sigmas), name == "uni_pc_bh2", callback)
    return out.to(x.dtype)
