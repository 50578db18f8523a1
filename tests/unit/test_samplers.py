"""Samplers: Euler against ComfyUI's sample_euler, UniPC against diffusers' UniPCMultistepScheduler step by step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dax_core.runtime.samplers import SAMPLERS, sample
from dax_core.runtime.schedules import flow_sigmas

_CHANNELS = 4


@pytest.fixture(scope="module")
def comfy_sample_euler(comfyui_importable: Path) -> Callable:
    import comfy.k_diffusion.sampling

    return comfy.k_diffusion.sampling.sample_euler


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


def _noise(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(1, _CHANNELS, 2, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)


def _trajectory(name: str, model: ToyFlow, x: torch.Tensor, sigmas: torch.Tensor) -> list[torch.Tensor]:
    steps: list[torch.Tensor] = []
    out = sample(name, model.denoise, x, sigmas, callback=lambda i, n, z: steps.append(z.clone()))
    assert torch.equal(out, steps[-1].to(out.dtype))
    return steps


# --- Euler ---------------------------------------------------------------------------------------------------------


@pytest.mark.comfyui
@pytest.mark.parametrize(("scheduler", "steps", "shift"), [("simple", 10, 5.0), ("normal", 7, 3.0), ("beta", 4, 8.0)])
def test_euler_matches_comfyui(comfy_sample_euler: Callable, scheduler: str, steps: int, shift: float) -> None:
    model = ToyFlow()
    sigmas = flow_sigmas(scheduler, steps, shift)
    x = _noise()
    reference: list[torch.Tensor] = []  # ComfyUI reports x *before* step i; we report it after
    final = comfy_sample_euler(
        lambda z, s: model.denoise(z, float(s[0])),
        x.clone(),
        sigmas,
        callback=lambda info: reference.append(info["x"].clone()),
        disable=True,
    )
    ours = _trajectory("euler", model, x, sigmas)
    assert len(ours) == steps
    # The same float32 operations in the same order: expected bit-identical (observed max error 0); 1e-6 relative
    # still fails for any real difference (a dropped or mis-scaled term moves values by >= 1e-3 here).
    for got, want in zip(ours, [*reference[1:], final], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


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


# --- UniPC ---------------------------------------------------------------------------------------------------------


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
    _assert_trajectories_close(_trajectory("uni_pc_bh2", model, x, sigmas), reference, 1e-12)
    # The float32 path against the same float64 reference: rounding accumulates to a few 1e-7 (observed 3.4e-7).
    _assert_trajectories_close(_trajectory("uni_pc_bh2", model, x.float(), sigmas), reference, 5e-6)


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
    _assert_trajectories_close(_trajectory("uni_pc_bh2", model, x, sigmas.double()), reference, 1e-12)


@pytest.mark.parametrize("steps", [2, 5, 20])
def test_unipc_bh1_matches_diffusers(steps: int) -> None:
    model = ToyFlow(seed=5)
    scheduler = _diffusers_unipc("bh1", steps=steps, shift=5.0)
    sigmas = scheduler.sigmas.float()
    x = _noise(torch.float64)
    reference = _diffusers_trajectory(scheduler, model, x)
    ours = _trajectory("uni_pc", model, x, sigmas)
    # diffusers' bh1 multiplies B(h) = -h = -inf by a zero correction on the final step to sigma 0 and returns NaN;
    # all earlier steps must match (1e-12, as above), and the final first-order step lands on x0 exactly.
    assert bool(reference[-1].isnan().all())
    _assert_trajectories_close(ours[:-1], reference[:-1], 1e-12)
    assert torch.equal(ours[-1], model.denoise(ours[-2], float(sigmas[-2])))


@pytest.mark.parametrize("name", ["uni_pc", "uni_pc_bh2"])
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
    x = _noise()
    sample(name, ToyFlow().denoise, x, flow_sigmas("simple", 6, 5.0), callback=lambda i, n, z: seen.append((i, n)))
    assert seen == [(i, 6) for i in range(6)]


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
        sample(name, denoise, _noise(), flow_sigmas("simple", 10, 5.0), callback=callback)
    assert len(calls) == 3


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_returns_input_dtype(name: str, dtype: torch.dtype) -> None:
    dtypes: list[torch.dtype] = []

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        dtypes.append(x.dtype)
        return (x * 0.5).to(dtype)

    out = sample(name, denoise, _noise(dtype), flow_sigmas("simple", 3, 5.0))
    assert out.dtype == dtype
    assert set(dtypes) == {torch.float64 if dtype == torch.float64 else torch.float32}


@pytest.mark.parametrize(
    ("name", "sigmas", "match"),
    [
        ("dpmpp_2m", torch.tensor([1.0, 0.0]), "unknown sampler 'dpmpp_2m'; valid samplers: euler, uni_pc, uni_pc_bh2"),
        ("euler", torch.tensor([1.0]), "at least 2 values"),
        ("euler", torch.ones(2, 2), "1-D tensor"),
        ("euler", [1.0, 0.0], "sigmas must be a torch.Tensor"),
        ("euler", torch.tensor([1.0, float("nan"), 0.0]), "finite"),
        ("euler", torch.tensor([1.0, 0.0, 0.0]), "> 0 except the last"),
        ("euler", torch.tensor([1.0, -0.5]), "last one, which must be >= 0"),
        (
            "uni_pc_bh2",
            torch.tensor([1.0, 0.5, 0.5, 0.0]),
            r"strictly decreasing sigmas, got sigmas\[2\] = 0.5 >= sigmas\[1\]",
        ),
        ("uni_pc", torch.tensor([1.5, 0.5, 0.0]), r"flow sigmas <= 1, got sigmas\[0\] = 1.5"),
    ],
)
def test_bad_inputs(name: str, sigmas: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample(name, ToyFlow().denoise, _noise(), sigmas)


def test_integer_latent_is_rejected() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        sample("euler", ToyFlow().denoise, torch.zeros(1, 4, dtype=torch.int64), torch.tensor([1.0, 0.0]))
