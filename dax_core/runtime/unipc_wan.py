"""Wan's own UniPC: order 2, predict-x0, on the flow path, as diffusers' UniPCMultistepScheduler runs it for Wan.

Wan's pipelines (and diffusers' Wan pipelines) configure UniPC with flow sigmas, solver order 2 and
``lower_order_final``; its half log-SNR is that of the flow path, ``log((1 - sigma) / sigma)``. This is not the
UniPC that ComfyUI's ``uni_pc`` runs (``unipc_comfy``), which reads the same sigmas as k-diffusion sigmas.
"""

from __future__ import annotations

import math

import torch

from .sampler_types import Denoiser, StepCallback

# diffusers' guard against log(alpha = 0) at sigma = 1: a leading sigma within 1e-6 of 1 is lowered by 1e-6.
_UNIT_SIGMA_EPS = 1e-6


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


def wan_unipc_sigmas(sigmas: torch.Tensor) -> list[float]:
    """The sigmas as the solver uses them: like diffusers, a leading sigma of 1 is lowered by 1e-6 (stored in
    float32, as diffusers stores its schedule) so that log(alpha / sigma) stays finite; the denoiser sees that value.
    """
    values = sigmas.tolist()
    if abs(values[0] - 1.0) < _UNIT_SIGMA_EPS:
        values[0] = float(torch.tensor(values[0] - _UNIT_SIGMA_EPS, dtype=torch.float32))
    return values


def sample_wan_unipc(
    denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, bh2: bool, callback: StepCallback | None
) -> torch.Tensor:
    """UniPC, order 2, predict-x0, as diffusers' UniPCMultistepScheduler (flow sigmas, lower_order_final).

    Step i: evaluate x0_i at sigma_i, correct x_i with UniC (using x0_i and the order of the previous predictor),
    then predict x_{i+1} with UniP of order min(2, i + 1, steps - i): the first step warms up and the final one is
    first order (lower_order_final), which lands exactly on x0 when the last sigma is 0.
    """
    values = wan_unipc_sigmas(sigmas)
    total = len(values) - 1
    x0_history: list[torch.Tensor] = []  # the last two x0 predictions, oldest first
    x_prev = x
    order_prev = 0
    for i in range(total):
        x0 = denoise(x, values[i]).to(x.dtype)
        if i > 0:
            step = _UniPCStep(values[i - 1], values[i], bh2)
            m0 = x0_history[-1]
            correction = x0 - m0
            if order_prev == 1:
                correction = 0.5 * correction
            else:
                rk = step.rk(values[i - 2])
                rho_old, rho_new = step.corrector_weights(rk)
                correction = rho_old * ((x0_history[-2] - m0) / rk) + rho_new * correction
            x = step.first_order(x_prev, m0) - (step.alpha_t * step.b_h) * correction
        x0_history = [*x0_history[-1:], x0]
        order = min(2, i + 1, total - i)
        step = _UniPCStep(values[i], values[i + 1], bh2)
        m0 = x0_history[-1]
        x_prev = x
        x = step.first_order(x, m0)
        if order == 2:
            rk = step.rk(values[i - 1])
            x = x - (step.alpha_t * step.b_h) * (0.5 * ((x0_history[-2] - m0) / rk))
        order_prev = order
        if callback is not None:
            callback(i, total, x)
    return x
