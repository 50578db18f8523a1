"""Samplers step by step: ComfyUI's own samplers (its KSAMPLER, on a CONST flow model sampling) for every ComfyUI name,
diffusers' UniPCMultistepScheduler for Wan's UniPC."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dax_core.runtime.samplers import (
    NOISE_INJECTING,
    SAMPLERS,
    final_sigma,
    inverse_noise_scaling,
    noise_scaling,
    sample,
)
from dax_core.runtime.schedules import flow_sigmas
from tests.unit.comfy_native import flow_sampling

_CHANNELS = 4
COMFY_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "lcm", "uni_pc", "uni_pc_bh2")


class ToyFlow:
    """Deterministic velocity field: a fixed random channel mix, a mild nonlinearity and sigma-dependent terms."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(_CHANNELS, _CHANNELS, generator=gen, dtype=torch.float64) * 0.5
        self.bias = torch.randn(1, _CHANNELS, 1, 1, 1, generator=gen, dtype=torch.float64)

    def velocity(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        mixed = torch.einsum("oc,bcthw->bothw", self.mix.to(x.dtype), x)
        return mixed + 0.3 * torch.tanh(x) + (sigma * self.bias + (1.0 - sigma) ** 2).to(x.dtype)

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x - sigma * self.velocity(x, sigma)


def _noise(dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, _CHANNELS, 2, 3, 5, generator=g, dtype=torch.float64).to(dtype)


def _trajectory(name: str, model: ToyFlow, x: torch.Tensor, sigmas: torch.Tensor) -> list[torch.Tensor]:
    steps: list[torch.Tensor] = []
    out = sample(name, model.denoise, x, sigmas, seed=0, callback=lambda i, n, z: steps.append(z.clone()))
    assert torch.equal(out, steps[-1].to(out.dtype))
    return steps


# --- ComfyUI's samplers --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comfy(comfyui_importable: Path) -> SimpleNamespace:
    import comfy.samplers

    return SimpleNamespace(samplers=comfy.samplers, sampling=flow_sampling(1.0))  # shift 1, as constructed


class _RecordingDenoiser:
    """The toy model as ComfyUI's samplers call it (``model(x, sigma_batch, **extra_args)``) and as ours do,
    recording every call's sigma and input."""

    def __init__(self, model: ToyFlow, model_sampling=None) -> None:
        self.model = model
        self.calls: list[tuple[float, torch.Tensor]] = []
        self.inner_model = SimpleNamespace(model_sampling=model_sampling)  # where KSAMPLER looks for it

    def __call__(self, x: torch.Tensor, sigma, **_extra) -> torch.Tensor:
        sigma = float(sigma[0]) if isinstance(sigma, torch.Tensor) else sigma
        self.calls.append((sigma, x.clone()))
        return self.model.denoise(x, sigma)


def _comfy_ksampler(comfy, name, model, noise, latent, sigmas, seed):
    """ComfyUI's KSAMPLER.sample for ``name``: noise scaling, its sampler function, inverse noise scaling."""
    denoiser = _RecordingDenoiser(model, comfy.sampling)
    extra_args = {"model_options": {}, "seed": seed}
    out = comfy.samplers.sampler_object(name).sample(
        denoiser, sigmas.clone(), extra_args, None, noise.clone(), latent.clone(), disable_pbar=True
    )
    return out, denoiser.calls


def _ours(name, model, noise, latent, sigmas, seed):
    denoiser = _RecordingDenoiser(model)
    x = sample(name, denoiser, noise_scaling(sigmas[0], noise, latent), sigmas, seed=seed)
    return inverse_noise_scaling(final_sigma(name, sigmas), x), denoiser.calls


SCHEDULES = {
    "1 step": flow_sigmas("simple", 1, 5.0),
    "2 steps": flow_sigmas("simple", 2, 5.0),
    "3 steps": flow_sigmas("simple", 3, 5.0),
    "normal 4": flow_sigmas("normal", 4, 3.0),
    "beta 10": flow_sigmas("beta", 10, 8.0),
    "leftover": flow_sigmas("simple", 9, 5.0)[:5],  # KSamplerAdvanced's end_at_step 4 with leftover noise
    "continued": flow_sigmas("simple", 9, 5.0)[4:],  # and start_at_step 4
    "custom": torch.tensor([0.7, 0.55, 0.31, 0.12, 0.04, 0.0]),  # a SIGMAS input starting below 1 (denoise)
}


@pytest.mark.comfyui
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", COMFY_SAMPLERS)
def test_matches_comfyui_step_by_step(comfy, name: str, schedule: str) -> None:
    # Every denoiser call (its sigma and its input latent) and the result, against ComfyUI's KSAMPLER on the
    # same toy model, noise, input latent and seed. The same float32 operations in the same order: observed
    # bit-identical; 1e-6 (a few float32 ulps at these magnitudes, ~10) still fails on any wrong coefficient,
    # order, history slot, noise draw or noise scaling, which move values by >= 1e-3 here.
    sigmas = SCHEDULES[schedule]
    model = ToyFlow(seed=2)
    noise, latent = _noise(seed=1), 0.5 * _noise(seed=2)
    expected, expected_calls = _comfy_ksampler(comfy, name, model, noise, latent, sigmas, seed=42)
    got, calls = _ours(name, model, noise, latent, sigmas, seed=42)
    assert [c[0] for c in calls] == [c[0] for c in expected_calls]  # the same sigmas, one call per step
    for (_, x_in), (_, want) in zip(calls, expected_calls, strict=True):
        torch.testing.assert_close(x_in, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.comfyui
@pytest.mark.parametrize("name", sorted(NOISE_INJECTING))
def test_noise_follows_the_seed_as_in_comfyui(comfy, name: str) -> None:
    # Another seed gives another result, and ComfyUI's for that seed: the noise comes from the seed, not elsewhere.
    sigmas, model, noise = SCHEDULES["normal 4"], ToyFlow(), _noise()
    latent = torch.zeros_like(noise)
    a, _ = _ours(name, model, noise, latent, sigmas, seed=1)
    b, _ = _ours(name, model, noise, latent, sigmas, seed=2)
    assert (a - b).abs().max() > 0.1
    torch.testing.assert_close(b, _comfy_ksampler(comfy, name, model, noise, latent, sigmas, seed=2)[0])


def test_euler_with_a_constant_prediction_is_exact() -> None:
    # With x0 fixed at c, each Euler step is x' = c + (x - c) * sigma'/sigma: the path is known in closed form.
    x = _noise()
    target = torch.linspace(-1, 1, x.numel()).reshape(x.shape)
    sigmas = flow_sigmas("simple", 6, 5.0)
    steps: list[torch.Tensor] = []
    out = sample("euler", lambda z, s: target, x, sigmas, callback=lambda i, n, z: steps.append(z))
    for i, got in enumerate(steps):
        expected = target + (x - target) * (sigmas[i + 1] / sigmas[0])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)  # float32 rounding of ~1-magnitude values
    torch.testing.assert_close(out, target, rtol=0, atol=1e-6)


def test_lcm_with_a_constant_prediction_renoises_to_each_sigma_in_float64() -> None:
    # lcm: x_{i+1} = sigma_{i+1} * n_i + (1 - sigma_{i+1}) * c with n_i the i-th draw of the seeded generator;
    # float64 end to end, so equal to 1e-12.
    x = _noise(torch.float64)
    target = torch.linspace(-1, 1, x.numel(), dtype=torch.float64).reshape(x.shape)
    sigmas = flow_sigmas("simple", 4, 5.0).double()
    generator = torch.Generator().manual_seed(9)
    draws = [torch.randn(x.shape, dtype=torch.float64, generator=generator) for _ in range(3)]
    steps: list[torch.Tensor] = []
    sample("lcm", lambda z, s: target, x, sigmas, seed=9, callback=lambda i, n, z: steps.append(z))
    for i, got in enumerate(steps[:-1]):
        s = sigmas[i + 1]
        torch.testing.assert_close(got, s * draws[i] + (1 - s) * target, rtol=0, atol=1e-12)
    assert torch.equal(steps[-1], target)


def test_leftover_noise_round_trips_through_the_noise_scaling() -> None:
    # A result at sigma leaves divided by 1 - sigma and re-enters multiplied by it (with zero noise): the same latent
    # up to float32 rounding of the two operations (2 ulps).
    x, sigma = _noise(), torch.tensor(0.6171875)
    back = noise_scaling(sigma, torch.zeros_like(x), inverse_noise_scaling(sigma, x))
    torch.testing.assert_close(back, x, rtol=2.5e-7, atol=0)
    assert inverse_noise_scaling(torch.tensor(0.0), x) is not x and torch.equal(inverse_noise_scaling(0.0, x), x)


# --- Wan's UniPC ---------------------------------------------------------------------------------------------------


def _diffusers_unipc(
    solver_type: str, *, steps: int | None = None, shift: float = 1.0, sigmas: torch.Tensor | None = None
):
    import diffusers  # a test dependency: missing, it is a failure, not a skip

    # Wan2.1's solver as diffusers configures it for the Wan pipelines.
    scheduler = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=2,
        solver_type=solver_type,
        predict_x0=True,
        lower_order_final=True,
    )
    if sigmas is None:
        scheduler.set_timesteps(num_inference_steps=steps)
    else:
        scheduler.set_timesteps(sigmas=sigmas[:-1].double().numpy())  # diffusers appends the final 0 itself
    scheduler.sigmas = scheduler.sigmas.double()  # run its coefficient math in float64 like ours
    scheduler.set_begin_index(0)
    return scheduler


def _diffusers_trajectory(scheduler, model: ToyFlow, x: torch.Tensor) -> list[torch.Tensor]:
    steps = []
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(model.velocity(x, float(scheduler.sigmas[i])), t, x).prev_sample
        steps.append(x)
    return steps


def _assert_trajectories_close(ours: list[torch.Tensor], reference: list[torch.Tensor], rel: float) -> float:
    assert len(ours) == len(reference)
    worst = 0.0
    for i, (got, want) in enumerate(zip(ours, reference, strict=True)):
        err = ((got.double() - want).abs().max() / want.abs().max()).item()
        assert err <= rel, f"step {i}: relative error {err:.3e} > {rel:.0e}"
        worst = max(worst, err)
    return worst


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 30])
@pytest.mark.parametrize("shift", [3.0, 5.0])
def test_unipc_bh2_matches_diffusers_schedule(steps: int, shift: float) -> None:
    model = ToyFlow()
    scheduler = _diffusers_unipc("bh2", steps=steps, shift=shift)
    sigmas = scheduler.sigmas.float()  # diffusers' own (float32-stored) flow-shifted schedule, fed to both
    x = _noise(torch.float64)
    reference = _diffusers_trajectory(scheduler, model, x)
    # float64 on both sides with the same formulas: only libm last-bit differences remain (observed <= 6e-16);
    # 1e-12 fails on any wrong coefficient, order or history slot (those change the result by >= 1e-4).
    _assert_trajectories_close(_trajectory("wan_unipc", model, x, sigmas), reference, 1e-12)
    # The float32 path against the same float64 reference: rounding accumulates to a few 1e-7 (observed 3.4e-7).
    _assert_trajectories_close(_trajectory("wan_unipc", model, x.float(), sigmas), reference, 5e-6)


@pytest.mark.parametrize("scheduler_name", ["simple", "beta", "sgm_uniform"])
def test_unipc_bh2_matches_diffusers_on_comfyui_sigmas(scheduler_name: str) -> None:
    # A ComfyUI schedule (starting at exactly sigma = 1) passed to diffusers as custom sigmas with shift 1: both
    # lower the leading 1 by 1e-6 (stored in float32) to keep log(alpha) finite; check they agree first.
    model = ToyFlow(seed=3)
    sigmas = flow_sigmas(scheduler_name, 12, 8.0)
    scheduler = _diffusers_unipc("bh2", sigmas=sigmas)
    assert torch.equal(scheduler.sigmas[1:].float(), sigmas[1:])
    assert scheduler.sigmas[0].item() == float(torch.tensor(1.0 - 1e-6, dtype=torch.float32))
    x = _noise(torch.float64)
    reference = _diffusers_trajectory(scheduler, model, x)
    _assert_trajectories_close(_trajectory("wan_unipc", model, x, sigmas.double()), reference, 1e-12)


@pytest.mark.parametrize("steps", [2, 5, 20])
def test_unipc_bh1_matches_diffusers(steps: int) -> None:
    model = ToyFlow(seed=5)
    scheduler = _diffusers_unipc("bh1", steps=steps, shift=5.0)
    sigmas = scheduler.sigmas.float()
    x = _noise(torch.float64)
    reference = _diffusers_trajectory(scheduler, model, x)
    ours = _trajectory("wan_unipc_bh1", model, x, sigmas)
    # diffusers' bh1 multiplies B(h) = -h = -inf by a zero correction on the final step to sigma 0 and returns NaN;
    # all earlier steps must match (1e-12, as above), and the final first-order step lands on x0 exactly.
    assert bool(reference[-1].isnan().all())
    _assert_trajectories_close(ours[:-1], reference[:-1], 1e-12)
    assert torch.equal(ours[-1], model.denoise(ours[-2], float(sigmas[-2])))


@pytest.mark.parametrize("name", ["wan_unipc", "wan_unipc_bh1"])
def test_unipc_final_step_returns_last_prediction(name: str) -> None:
    # lower_order_final: the last step to sigma 0 is first order, i.e. exactly the last x0 prediction.
    model = ToyFlow()
    predictions: list[torch.Tensor] = []

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        predictions.append(model.denoise(x, sigma))
        return predictions[-1]

    out = sample(name, denoise, _noise(), flow_sigmas("simple", 8, 5.0))
    assert len(predictions) == 8
    assert torch.equal(out, predictions[-1])


# --- API behaviour -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLERS)
def test_callback_sees_every_step(name: str) -> None:
    seen: list[tuple[int, int]] = []
    calls: list[float] = []

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        calls.append(sigma)
        return ToyFlow().denoise(x, sigma)

    sample(name, denoise, _noise(), flow_sigmas("simple", 6, 5.0), seed=0, callback=lambda i, n, z: seen.append((i, n)))
    assert seen == [(i, 6) for i in range(6)]
    assert len(calls) == 6  # one denoiser call per step: what the step caches count


@pytest.mark.parametrize("name", SAMPLERS)
def test_callback_exception_propagates_and_stops_sampling(name: str) -> None:
    class Cancelled(Exception):
        pass

    calls: list[float] = []

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        calls.append(sigma)
        return x * 0.5

    def callback(i: int, n: int, x: torch.Tensor) -> None:
        if i == 2:
            raise Cancelled("user cancelled")

    with pytest.raises(Cancelled, match="user cancelled"):
        sample(name, denoise, _noise(), flow_sigmas("simple", 10, 5.0), seed=0, callback=callback)
    assert len(calls) == 3


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_returns_input_dtype(name: str, dtype: torch.dtype) -> None:
    dtypes: list[torch.dtype] = []

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        dtypes.append(x.dtype)
        return (x * 0.5).to(dtype)

    out = sample(name, denoise, _noise(dtype), flow_sigmas("simple", 3, 5.0), seed=0)
    assert out.dtype == dtype
    assert set(dtypes) == {torch.float64 if dtype == torch.float64 else torch.float32}


@pytest.mark.parametrize(
    ("name", "sigmas", "match"),
    [
        ("heun", torch.tensor([1.0, 0.0]), "unknown sampler 'heun'; valid samplers: euler, euler_ancestral, dpmpp_2m"),
        ("euler", torch.tensor([1.0]), "at least 2 values"),
        ("euler", torch.ones(2, 2), "1-D tensor"),
        ("euler", [1.0, 0.0], "sigmas must be a torch.Tensor"),
        ("euler", torch.tensor([1.0, float("nan"), 0.0]), "finite"),
        ("euler", torch.tensor([1.0, 0.0, 0.0]), "> 0 except the last"),
        ("euler", torch.tensor([1.0, -0.5]), "last one, which must be >= 0"),
        (
            "uni_pc_bh2",
            torch.tensor([1.0, 0.5, 0.5, 0.0]),
            r"strictly decreasing, got sigmas\[2\] = 0.5 >= sigmas\[1\]",
        ),
        ("dpmpp_2m", torch.tensor([0.5, 0.8, 0.0]), r"strictly decreasing, got sigmas\[1\] = 0.8"),
        ("wan_unipc", torch.tensor([1.5, 0.5, 0.0]), r"lie in \[0, 1\] \(1 is pure noise\), got sigmas\[0\] = 1.5"),
    ],
)
def test_bad_inputs(name: str, sigmas: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample(name, ToyFlow().denoise, _noise(), sigmas, seed=0)


def test_integer_latent_is_rejected() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        sample("euler", ToyFlow().denoise, torch.zeros(1, 4, dtype=torch.int64), torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("name", sorted(NOISE_INJECTING))
def test_a_noise_injecting_sampler_needs_a_seed(name: str) -> None:
    with pytest.raises(ValueError, match="adds noise at every step: give the seed"):
        sample(name, ToyFlow().denoise, _noise(), flow_sigmas("simple", 3, 5.0))
