"""Flow sigma schedules: hand-computed values, invariants, and bit-exact parity with ComfyUI's own schedulers."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dax_core.runtime.schedules import SCHEDULERS, flow_sigmas, sigma_table, sigma_to_timestep


@pytest.fixture(scope="module")
def comfy(comfyui_importable: Path) -> SimpleNamespace:
    import comfy.model_sampling
    import comfy.samplers

    return SimpleNamespace(model_sampling=comfy.model_sampling, samplers=comfy.samplers)


def _comfy_flow(comfy: SimpleNamespace, shift: float):
    sampling = comfy.model_sampling.ModelSamplingDiscreteFlow()
    sampling.set_parameters(shift=shift, multiplier=1000)
    return sampling


def test_simple_hand_computed_shift_1() -> None:
    # 4 steps pick table entries 999, 749, 499, 249 -> t = 1, .75, .5, .25; with shift 1, sigma = t.
    # rtol 1e-6: float32 rounding of t*1000/1000 is ~6e-8; a neighbouring table entry is 1e-3 away.
    expected = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    got = flow_sigmas("simple", 4, 1.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_simple_hand_computed_shift_8() -> None:
    # sigma = 8t / (1 + 7t) at t = 1, .75, .5, .25; neighbouring entries differ by >= 1.2e-4, float32 error ~1e-7.
    expected = torch.tensor([1.0, 6.0 / 6.25, 4.0 / 4.5, 2.0 / 2.75, 0.0])
    torch.testing.assert_close(flow_sigmas("simple", 4, 8.0), expected, rtol=1e-6, atol=0)


def test_beta_two_steps_uses_the_median() -> None:
    # Beta(0.6, 0.6) quantiles at q = 1 and 0.5 are 1 and 0.5 -> indices rint(999) and rint(499.5) = 500
    # (half to even); with shift 1 the table holds (i + 1) / 1000. Exact: these are float32 table entries.
    assert flow_sigmas("beta", 2, 1.0).tolist() == [1.0, float(torch.tensor(0.501)), 0.0]


def test_sigma_table_endpoints() -> None:
    table = sigma_table(5.0)
    assert table.shape == (1000,)
    assert table[-1].item() == 1.0
    # sigma_min = 5 * 0.001 / (1 + 4 * 0.001); float32 precision.
    assert table[0].item() == pytest.approx(0.005 / 1.004, rel=1e-6)


def test_sigma_to_timestep() -> None:
    assert sigma_to_timestep(0.5) == 500.0
    assert torch.equal(sigma_to_timestep(torch.tensor([1.0, 0.25])), torch.tensor([1000.0, 250.0]))


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("steps", [1, 2, 7, 30])
def test_schedule_invariants(scheduler: str, steps: int) -> None:
    sigmas = flow_sigmas(scheduler, steps, 5.0)
    assert sigmas.dtype == torch.float32
    assert sigmas.shape == (steps + 1,)
    assert sigmas[-1].item() == 0.0
    assert sigmas[0].item() == 1.0
    assert bool((sigmas[1:] < sigmas[:-1]).all()), sigmas


@pytest.mark.comfyui
@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize(
    ("steps", "shift"), [(1, 5.0), (4, 8.0), (20, 3.0), (30, 5.0), (50, 1.0), (13, 3.14159), (200, 12.0)]
)
def test_matches_comfyui(comfy: SimpleNamespace, scheduler: str, steps: int, shift: float) -> None:
    # Bit-exact: the same float32 operations in the same order (200 beta steps also covers its duplicate dropping).
    expected = comfy.samplers.calculate_sigmas(_comfy_flow(comfy, shift), scheduler, steps)
    got = flow_sigmas(scheduler, steps, shift)
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected), (got - expected).abs().max() if got.shape == expected.shape else got.shape


@pytest.mark.comfyui
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 0.5])
def test_table_matches_comfyui(comfy: SimpleNamespace, shift: float) -> None:
    assert torch.equal(sigma_table(shift), _comfy_flow(comfy, shift).sigmas)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("karras", 10, 5.0), "unknown scheduler 'karras'; valid schedulers: simple, normal, sgm_uniform"),
        (("simple", 0, 5.0), "steps must be an integer >= 1, got 0"),
        (("simple", -3, 5.0), "steps must be an integer >= 1"),
        (("simple", 2.5, 5.0), "steps must be an integer >= 1"),
        (("simple", 10, 0.0), "shift must be a finite number > 0, got 0.0"),
        (("simple", 10, -2.0), "shift must be a finite number > 0"),
        (("simple", 10, math.nan), "shift must be a finite number > 0"),
        (("simple", 10, math.inf), "shift must be a finite number > 0"),
    ],
)
def test_bad_inputs(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        flow_sigmas(*args)
