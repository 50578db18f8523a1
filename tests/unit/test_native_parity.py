"""The DAX engine against ComfyUI's own sampler nodes (KSampler, KSamplerAdvanced, SamplerCustom) on ComfyUI's own
WanModel, same weights, same seed.

This checks everything between the nodes and the model at once: the initial noise for a seed, the latent
normalisation on the way in and out, the flow timestep scale, the shift schedule and how KSampler cuts it (denoise,
start/end steps, leftover noise), the noise scaling in and out, classifier-free guidance, every sampler's update and
the noise that the ancestral samplers draw.

Tolerance, for every comparison below: float32 on both sides, and the two models agree to ~1e-6 relative per call
(test_model_reference); through at most 6 steps with CFG 4.5 (which scales the branches' difference) that stays
below ~3e-5 (observed <= 7e-6). A wrong schedule cut, noise seed, noise scaling or leftover rescale is off by
>= 1e-3 (ComfyUI's UniPC result divided by 1 - 0.001 alone is 1e-3).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dax_core.models.spec import WanSpec
from dax_core.models.tiny import random_state_dict
from dax_core.models.wan import WanModel
from dax_core.recipe import Recipe
from dax_core.runtime.engine import SampleRequest, WanEngine
from tests.numerics import rel_error
from tests.unit.comfy_native import comfyui_nodes, native_patcher

# ComfyUI reads Wan's head count as dim // 128 and fixes the text width at 4096: the spec follows both.
SPEC = WanSpec(dim=256, num_layers=2, num_heads=2, ffn_dim=256, text_dim=4096)
REL = 5e-5  # see the module docstring
SEED, STEPS, CFG, SHIFT = 1234, 6, 4.5, 8.0
COMFY_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m", "lcm", "uni_pc", "uni_pc_bh2")
# the samplers whose ComfyUI callback sees the latent before each step (ComfyUI's UniPC reports its own scale)
K_DIFFUSION = ("euler", "euler_ancestral", "dpmpp_2m", "lcm")


@pytest.fixture(scope="module")
def comfy(comfyui_importable):
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler
    import latent_preview

    nodes = comfyui_nodes(comfyui_importable)

    state = random_state_dict(SPEC, seed=3)
    patcher = native_patcher(state, SHIFT)  # ComfyUI's shift lives in the model's sampling object

    ours = WanModel(SPEC, dtype=torch.float32)
    ours.load_state_dict(state)
    engine = WanEngine(ours.eval(), Recipe("unused.safetensors", compute_dtype="fp32"), "cpu")

    g = torch.Generator().manual_seed(7)
    return SimpleNamespace(
        nodes=nodes,
        custom=comfy_extras.nodes_custom_sampler,
        samplers=comfy.samplers,
        sample=comfy.sample,
        latent_preview=latent_preview,
        patcher=patcher,
        engine=engine,
        pos=torch.randn(1, 6, SPEC.text_dim, generator=g),
        neg=torch.randn(1, 6, SPEC.text_dim, generator=g),
        empty=torch.zeros(1, 16, 3, 4, 6),
        # a VAE-space latent (un-normalised, about the Wan21 statistics' scale), for video-to-video
        video=torch.randn(1, 16, 3, 4, 6, generator=g) * 2.0 + 0.3,
    )


@pytest.fixture
def native_steps(comfy, monkeypatch):
    """The latent ComfyUI's sampler nodes report before every step (their preview callback), per step index."""
    seen: dict[int, torch.Tensor] = {}

    def prepare_callback(model, steps, x0_output_dict=None):
        return lambda step, x0, x, total_steps: seen.__setitem__(step, x.clone())

    monkeypatch.setattr(comfy.latent_preview, "prepare_callback", prepare_callback)
    monkeypatch.setattr(comfy.nodes.comfy.utils, "PROGRESS_BAR_ENABLED", False)
    return seen


def _conds(comfy):
    return [[comfy.pos, {}]], [[comfy.neg, {}]]


def native_advanced(comfy, sampler, latent, add_noise, start, end, leftover, steps=STEPS, scheduler="simple"):
    positive, negative = _conds(comfy)
    (out,) = comfy.nodes.KSamplerAdvanced().sample(
        comfy.patcher, add_noise, SEED, steps, CFG, sampler, scheduler, positive, negative, {"samples": latent},
        start, end, leftover,
    )  # fmt: skip
    return out["samples"]


def native_ksampler(comfy, sampler, latent, denoise):
    positive, negative = _conds(comfy)
    (out,) = comfy.nodes.KSampler().sample(
        comfy.patcher, SEED, STEPS, CFG, sampler, "simple", positive, negative, {"samples": latent}, denoise=denoise
    )
    return out["samples"]


def native_custom(comfy, sampler, latent, sigmas, add_noise):
    positive, negative = _conds(comfy)
    out, _denoised = comfy.custom.SamplerCustom().sample(
        comfy.patcher, add_noise, SEED, CFG, positive, negative, comfy.samplers.sampler_object(sampler),
        sigmas.clone(), {"samples": latent},
    )  # fmt: skip
    return out["samples"]


def dax(comfy, sampler, latent, steps_seen=None, **options):
    request = SampleRequest(
        positive=comfy.pos, negative=comfy.neg, latent=latent, seed=SEED, steps=options.pop("steps", STEPS), cfg=CFG,
        shift=SHIFT, sampler=sampler, **options,
    )  # fmt: skip
    on_step = None if steps_seen is None else lambda i, total, x: steps_seen.append(x.clone())
    return comfy.engine.sample(request, on_step=on_step).latent


@pytest.mark.parametrize("cfg", [1.0, 4.5])
def test_engine_matches_native_ksampler(comfy, cfg):
    positive, negative = _conds(comfy)
    noise = comfy.sample.prepare_noise(comfy.empty, SEED)
    native_out = comfy.sample.sample(
        comfy.patcher, noise, 4, cfg, "euler", "simple", positive, negative, comfy.empty, disable_pbar=True, seed=SEED
    )
    result = comfy.engine.sample(
        SampleRequest(positive=comfy.pos, negative=comfy.neg, latent=comfy.empty, seed=SEED, steps=4, cfg=cfg,
                      shift=SHIFT, sampler="euler", scheduler="simple")
    )  # fmt: skip
    assert rel_error(result.latent, native_out) < REL


@pytest.mark.parametrize(
    ("latent", "add_noise", "start", "end", "leftover"),
    [
        ("empty", "enable", 0, 10000, "disable"),  # the whole schedule
        ("empty", "enable", 0, 4, "enable"),  # the first expert of a chain: stop with the noise left in
        ("empty", "enable", 0, 4, "disable"),  # stop early and denoise fully at the last step
        ("video", "enable", 2, 10000, "disable"),  # start late on a noised input
    ],
)
@pytest.mark.parametrize("sampler", COMFY_SAMPLERS)
def test_ksampler_advanced_step_by_step(comfy, native_steps, sampler, latent, add_noise, start, end, leftover):
    image = getattr(comfy, latent)
    expected = native_advanced(comfy, sampler, image, add_noise, start, end, leftover)
    ours: list[torch.Tensor] = []
    got = dax(comfy, sampler, image, ours, add_noise=add_noise == "enable", start_at_step=start, end_at_step=end,
              return_with_leftover_noise=leftover == "enable")  # fmt: skip
    assert rel_error(got, expected) < REL
    if sampler in K_DIFFUSION:  # ComfyUI shows step i the latent our step i - 1 produced
        assert sorted(native_steps) == list(range(len(ours)))
        for i, x in enumerate(ours[:-1]):
            assert rel_error(x, native_steps[i + 1]) < REL, f"step {i}"


@pytest.mark.parametrize("sampler", COMFY_SAMPLERS)
def test_two_chained_samplers_continue_each_other_as_native_ones(comfy, native_steps, sampler):
    # Wan2.2's two experts: steps 0-4 with the leftover noise returned, then 4-6 without adding noise. ComfyUI starts
    # every sampler afresh (dpmpp_2m's and UniPC's history, the ancestral noise sequence): so do we. Every mix of
    # native and DAX halves equals native all the way.
    first = native_advanced(comfy, sampler, comfy.empty, "enable", 0, 4, "enable")
    native_chain = native_advanced(comfy, sampler, first, "disable", 4, 10000, "disable")
    ours_first = dax(comfy, sampler, comfy.empty, end_at_step=4, return_with_leftover_noise=True)
    assert rel_error(ours_first, first) < REL
    continued = {"add_noise": False, "start_at_step": 4, "end_at_step": 10000}
    assert rel_error(dax(comfy, sampler, first, **continued), native_chain) < REL
    assert rel_error(dax(comfy, sampler, ours_first, **continued), native_chain) < REL
    assert rel_error(native_advanced(comfy, sampler, ours_first, "disable", 4, 10000, "disable"), native_chain) < REL


def test_a_chained_single_step_sampler_equals_one_run(comfy):
    # Euler keeps no state between steps, so 0-3 then 3-6 is one run 0-6; the leftover latent leaves divided by
    # 1 - sigma, de-normalised, and comes back normalised and multiplied by 1 - sigma: float32 rounding of those
    # few operations (~1e-7) carried through three steps, far below REL; a lost rescale is off by ~sigma.
    first = dax(comfy, "euler", comfy.empty, end_at_step=3, return_with_leftover_noise=True)
    chained = dax(comfy, "euler", first, add_noise=False, start_at_step=3)
    assert rel_error(chained, dax(comfy, "euler", comfy.empty)) < 1e-5


@pytest.mark.parametrize("sampler", COMFY_SAMPLERS)
def test_denoise_below_one_matches_native_ksampler(comfy, native_steps, sampler):
    # video-to-video: int(6 / 0.6) = 10 scheduled steps, the last 6 run on the input latent noised to the first
    assert (
        rel_error(dax(comfy, sampler, comfy.video, denoise=0.6), native_ksampler(comfy, sampler, comfy.video, 0.6))
        < REL
    )


SIGMAS = {
    "to zero": torch.tensor([1.0, 0.93, 0.8, 0.55, 0.3, 0.0]),
    "leftover": torch.tensor([0.9, 0.8, 0.55, 0.3, 0.12]),  # ends with noise left, starts below 1
}


@pytest.mark.parametrize(("sigmas", "latent", "add_noise"), [("to zero", "empty", True), ("leftover", "video", False)])
@pytest.mark.parametrize("sampler", COMFY_SAMPLERS)
def test_sigmas_input_matches_sampler_custom(comfy, native_steps, sampler, sigmas, latent, add_noise):
    # A SIGMAS input is run as given: no KSampler rule (UniPC's dropped penultimate sigma) applies
    image, schedule = getattr(comfy, latent), SIGMAS[sigmas]
    expected = native_custom(comfy, sampler, image, schedule, add_noise)
    assert rel_error(dax(comfy, sampler, image, sigmas=schedule, add_noise=add_noise), expected) < REL
