"""ComfyUI's ``uni_pc`` / ``uni_pc_bh2``: UniPC (up to order 3, predict-x0) on k-diffusion sigmas.

ComfyUI's UniPC reads every sigma as a k-diffusion (variance-exploding) sigma, also on a flow model such as Wan:
it works in the variance-preserving scale ``x / sqrt(1 + sigma^2)`` with ``alpha = 1 / sqrt(1 + sigma^2)``, runs
order ``min(3, steps - 1)`` with ``lower_order_final``, and stops at sigma 0.001 instead of 0 (its result is
then taken to be a latent at that sigma). So it is a different solver from Wan's own UniPC (``unipc_wan``), which
uses the flow path's log-SNR and order 2; both integrate the same ODE, and differ at a finite number of steps.

The coefficient arithmetic runs on 0-d tensors of the latent's working dtype in ComfyUI's order of operations,
so a float32 run rounds as ComfyUI's does. One denoiser call per step.
"""

from __future__ import annotations

import torch

from .sampler_types import Denoiser, StepCallback

# ComfyUI replaces a final sigma of 0 by this (its log-SNR would be infinite)
FINAL_SIGMA = 0.001
MAX_ORDER = 3


def _log_alpha(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((t * t) + 1))


def _alpha(t: torch.Tensor) -> torch.Tensor:
    return torch.exp(_log_alpha(t))


def _std(t: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(t)))


def _lambda(t: torch.Tensor) -> torch.Tensor:
    log_alpha = _log_alpha(t)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def solver_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The sigmas the solver steps through: a final 0 becomes ``FINAL_SIGMA`` (in the sigmas' dtype)."""
    values = sigmas.clone()
    if float(values[-1]) == 0.0:
        values[-1] = FINAL_SIGMA
    return values


class _Solver:
    def __init__(self, denoise: Denoiser, bh2: bool) -> None:
        self.denoise = denoise
        self.bh2 = bh2

    def x0(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The data prediction at the variance-preserving ``x``: the denoiser runs on the k-diffusion scale."""
        x_in = x * ((t**2 + 1.0) ** 0.5)
        eps = (x_in - self.denoise(x_in, float(t)).to(x.dtype)) / t
        return (x - _std(t) * eps) / _alpha(t)

    def update(
        self,
        x: torch.Tensor,
        models: list[torch.Tensor],
        times: list[torch.Tensor],
        t: torch.Tensor,
        order: int,
        use_corrector: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One multistep UniP (+ UniC) update to ``t`` of ``order`` from the last ``order`` model outputs."""
        dtype = x.dtype
        lambda_prev_0 = _lambda(times[-1])
        lambda_t = _lambda(t)
        model_prev_0 = models[-1]
        sigma_prev_0, sigma_t = _std(times[-1]), _std(t)
        alpha_t = torch.exp(_log_alpha(t))
        h = lambda_t - lambda_prev_0

        rks: list[torch.Tensor] = []
        d1s: list[torch.Tensor] = []
        for i in range(1, order):
            rk = (_lambda(times[-(i + 1)]) - lambda_prev_0) / h
            rks.append(rk)
            d1s.append((models[-(i + 1)] - model_prev_0) / rk)
        rks.append(torch.ones((), dtype=dtype))
        rk_vector = torch.stack(rks)

        hh = -h
        h_phi_1 = torch.expm1(hh)  # h * phi_1(h) = e^h - 1
        h_phi_k = h_phi_1 / hh - 1
        b_h = torch.expm1(hh) if self.bh2 else hh
        powers, b = [], []
        factorial = 1
        for i in range(1, order + 1):
            powers.append(torch.pow(rk_vector, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r_matrix = torch.stack(powers)
        b_vector = torch.stack(b)

        # the coefficients are solved on the CPU, beside the sigmas; the weights join the latents on their device
        half = torch.full((1,), 0.5, dtype=dtype)
        differences = torch.stack(d1s, dim=1) if d1s else None
        x_t = (sigma_t / sigma_prev_0) * x - (alpha_t * h_phi_1) * model_prev_0
        if differences is not None:
            rhos_p = half if order == 2 else torch.linalg.solve(r_matrix[:-1, :-1], b_vector[:-1])
            rhos_p = rhos_p.to(x.device)
            predicted = x_t - (alpha_t * b_h) * torch.tensordot(differences, rhos_p, dims=([1], [0]))
        else:
            predicted = x_t
        if not use_corrector:
            return predicted, None
        rhos_c = (half if order == 1 else torch.linalg.solve(r_matrix, b_vector)).to(x.device)
        model_t = self.x0(predicted, t)
        correction = rhos_c[-1] * (model_t - model_prev_0)
        if differences is not None:
            correction = torch.tensordot(differences, rhos_c[:-1], dims=([1], [0])) + correction
        return x_t - (alpha_t * b_h) * correction, model_t


def sample_comfy_unipc(
    denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, bh2: bool, callback: StepCallback | None
) -> torch.Tensor:
    """ComfyUI's ``sample_unipc`` (``variant`` bh1, or bh2): ``x`` at ``sigmas[0]`` -> the latent at the last
    solver sigma (``solver_sigmas``), on the k-diffusion scale.

    Step index 0 evaluates the model at ``sigmas[0]``; index i >= 1 moves to ``sigmas[i]`` with a predictor of order
    min(i, order) (warm-up) or ``min(order, steps + 1 - i)`` (lower_order_final), and its corrector evaluates the
    model there; the last index also takes the final, uncorrected step to the last sigma. With a single step
    (order 0) nothing moves: ComfyUI returns the input rescaled, and so does this.
    """
    times = solver_sigmas(sigmas)
    steps = len(times) - 1
    order = min(MAX_ORDER, len(times) - 2)
    solver = _Solver(denoise, bh2)
    x = x / torch.sqrt(1.0 + times[0] ** 2.0)
    models: list[torch.Tensor] = []
    history: list[torch.Tensor] = []
    for index in range(steps):
        if index == 0:
            models, history = [solver.x0(x, times[0])], [times[0]]
        elif index < order:
            x, model_x = solver.update(x, models, history, times[index], index, use_corrector=True)
            models.append(model_x)
            history.append(times[index])
        else:
            last = steps if index == steps - 1 else index
            for step in range(index, last + 1):
                x, model_x = solver.update(
                    x, models, history, times[step], min(order, steps + 1 - step), use_corrector=step != steps
                )
                models, history = [*models[1:], models[-1]], [*history[1:], times[step]]
                if step < steps:
                    models[-1] = model_x
        if callback is not None:
            reached = times[-1] if index == steps - 1 else times[index]
            callback(index, steps, x / _alpha(reached))
    return x / _alpha(times[-1])
