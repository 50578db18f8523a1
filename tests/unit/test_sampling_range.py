"""Which sigmas a request runs (KSampler's schedule, denoise, KSamplerAdvanced's start/end cut, a SIGMAS input),
bit for bit against ComfyUI's own KSampler; the requests refused before any step; and the step caches counting
the steps a cut run actually takes."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from dax_core.cache.teacache import TeaCache
from dax_core.runtime.engine import SampleRequest
from dax_core.runtime.schedules import flow_sigmas
from tests.unit.comfy_native import flow_sampling
from tests.unit.tiny_wan import tiny_engine, tiny_request


def _with(req: SampleRequest, **changes) -> SampleRequest:
    return dataclasses.replace(req, **changes)


@pytest.fixture(scope="module")
def comfy_ksampler(comfyui_importable):
    """The sigmas ComfyUI's KSampler (comfy.samplers.KSampler: set_steps, then sample's cut) hands its sampler."""
    import comfy.samplers

    def run(req: SampleRequest, monkeypatch) -> torch.Tensor | None:
        sampling = flow_sampling(req.shift)
        model = SimpleNamespace(get_model_object=lambda name: {"model_sampling": sampling}[name])
        seen: list[torch.Tensor] = []
        monkeypatch.setattr(comfy.samplers, "sample", lambda *args, **kwargs: seen.append(args[7].clone()))
        sampler = comfy.samplers.KSampler(model, req.steps, "cpu", req.sampler, req.scheduler, denoise=req.denoise)
        latent = torch.zeros(1)
        returned = sampler.sample(
            None, None, None, req.cfg, latent_image=latent, start_step=req.start_at_step, last_step=req.end_at_step,
            force_full_denoise=not req.return_with_leftover_noise,
            sigmas=None if req.sigmas is None else req.sigmas.clone(),  # ComfyUI zeroes the last one in place
        )  # fmt: skip
        return None if returned is latent else seen[0]  # None: ComfyUI returns the latent unchanged

    return run


CASES = {
    "default": {},
    "denoise 0.6": {"denoise": 0.6},
    "denoise 0.35 beta": {"denoise": 0.35, "scheduler": "beta"},
    "first expert": {"end_at_step": 4, "return_with_leftover_noise": True},
    "first expert, denoised": {"end_at_step": 4},
    "second expert": {"start_at_step": 4, "end_at_step": 10000},
    "middle, normal": {"start_at_step": 2, "end_at_step": 5, "return_with_leftover_noise": True, "scheduler": "normal"},
    "end past the schedule": {"end_at_step": 9, "return_with_leftover_noise": True},
    "start and denoise": {"start_at_step": 1, "denoise": 0.5},
    "sigmas input": {"sigmas": torch.tensor([0.9, 0.7, 0.45, 0.2, 0.05])},
    "sigmas input cut": {"sigmas": torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0]), "start_at_step": 1, "end_at_step": 3},
}


@pytest.mark.comfyui
@pytest.mark.parametrize("sampler", ["euler", "uni_pc_bh2"])  # uni_pc: KSampler drops the next-to-last sigma
@pytest.mark.parametrize("case", list(CASES))
def test_run_sigmas_are_comfyuis(comfy_ksampler, monkeypatch, case: str, sampler: str) -> None:
    req = _with(tiny_request(steps=7), sampler=sampler, shift=5.0, **CASES[case])
    expected = comfy_ksampler(req, monkeypatch)
    assert expected is not None
    given = None if req.sigmas is None else req.sigmas.clone()
    assert torch.equal(req.run_sigmas(), expected)  # the same float32 schedule and cut: bit-identical
    assert given is None or torch.equal(req.sigmas, given)  # and the SIGMAS input is left as it was


@pytest.mark.comfyui
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"start_at_step": 7}, "leaves none of the schedule's 7 steps to run"),
        ({"start_at_step": 9, "end_at_step": 10000}, "leaves none of the schedule's 7 steps"),
        ({"start_at_step": 4, "end_at_step": 4}, "start_at_step 4 must be below end_at_step 4: no step would run"),
        ({"start_at_step": 5, "end_at_step": 2}, "must be below end_at_step 2"),
        ({"sigmas": torch.tensor([0.8, 0.3]), "start_at_step": 1}, "leaves none of the schedule's 1 steps"),
    ],
)
def test_where_comfyui_returns_the_latent_unchanged_the_request_is_refused(comfy_ksampler, monkeypatch, changes,
                                                                         message) -> None:  # fmt: skip
    base = tiny_request(steps=7)
    with pytest.raises(ValueError, match=message):
        _with(base, **changes)
    # the request, built without its own checks, is one that ComfyUI answers with the latent unchanged
    unchecked = object.__new__(SampleRequest)
    for field in dataclasses.fields(SampleRequest):
        object.__setattr__(unchecked, field.name, changes.get(field.name, getattr(base, field.name)))
    assert comfy_ksampler(unchecked, monkeypatch) is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"denoise": 0.0}, r"denoise must be in \(0, 1\], got 0.0: 1 samples from pure noise"),
        ({"denoise": 1.5}, r"denoise must be in \(0, 1\], got 1.5"),
        ({"denoise": float("nan")}, r"denoise must be in \(0, 1\]"),
        ({"start_at_step": -1}, "start_at_step and end_at_step must be >= 0"),
        ({"start_at_step": 1.5}, "start_at_step must be an integer step index, got 1.5"),
        ({"end_at_step": True}, "end_at_step must be an integer step index"),
        ({"add_noise": "disable"}, "add_noise must be True or False, got 'disable'"),
        ({"sigmas": torch.tensor([1.0, 0.5, 0.6, 0.0])}, r"strictly decreasing, got the sigmas input\[2\] = 0.6"),
        ({"sigmas": torch.tensor([14.6, 7.0, 0.0])}, r"lie in \[0, 1\] \(1 is pure noise\).*not a Karras sigma range"),
        ({"sigmas": torch.tensor([0.5])}, "at least 2 values"),
        ({"sigmas": torch.tensor([1.0, 0.0, 0.0])}, "> 0 except the last one"),
        ({"sigmas": torch.tensor([1, 0])}, "floating-point"),
        ({"sigmas": flow_sigmas("simple", 4, 5.0), "denoise": 0.5}, "with a sigmas input, cut the sigmas instead"),
        ({"sampler": "uni_pc_bh3"}, "unknown sampler 'uni_pc_bh3'; choose one of euler, euler_ancestral"),
    ],
)
def test_bad_sampling_options_are_refused_when_the_request_is_made(changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        _with(tiny_request(), **changes)


def test_a_cut_run_counts_its_own_steps_in_the_step_cache_and_the_result() -> None:
    # TeaCache ("e": first and last step forced; a constant rescale of 1 per step against 2.5 skips two of every
    # three) sees a run of 5 steps when steps 3-8 of 12 run: the pattern of a plain 5-step run. (A plain 5-step
    # schedule itself runs without its step cache: engine.FEW_STEPS.)
    engine = tiny_engine()
    engine.model.step_cache = TeaCache((1.0,), threshold=2.5, mode="e")
    cut = engine.sample(_with(tiny_request(steps=12), start_at_step=3, end_at_step=8))
    assert cut.steps == 5 and cut.step_cache.steps == 5
    assert [b.pattern for b in cut.step_cache.branches] == ["CSSCC", "CSSCC"]
    # denoise: 6 of int(6 / 0.5) = 12 scheduled steps run
    assert engine.sample(_with(tiny_request(steps=6), denoise=0.5, latent=torch.ones(1, 16, 3, 8, 8))).steps == 6
