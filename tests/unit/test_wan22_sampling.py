"""DAX's sampler against ComfyUI's KSampler on Wan2.2 TI2V (48 channels) from the tensors native nodes produce:
Wan22ImageToVideoLatent with a start image (its encoded first frame and noise mask: per-frame timesteps, the first
frame kept) and without one (an empty 48-channel latent: text-to-video); and a noise mask on a 16-channel model, which
native WAN21 applies without per-frame timesteps (the kept part noised to each step's sigma).

Tolerance, as in test_native_parity: float32 on both sides with the same weights, ~1e-6 relative per model call
(test_wan22_model), through at most 6 steps with CFG 4.5 below ~3e-5. Using the Wan2.1 statistics for the 48
channels, dropping the mask's per-frame timesteps, not keeping the first frame or keeping it noised each move the
result by more than 1e-3 (the tests below that could not otherwise fail check so).
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

# ComfyUI reads a Wan head count of dim // 128 and a text width of 4096; 48 output channels make it WAN22 (TI2V)
TI2V = WanSpec(dim=256, num_layers=2, num_heads=2, ffn_dim=256, in_dim=48, out_dim=48, model_type="ti2v")
T2V = WanSpec(dim=256, num_layers=2, num_heads=2, ffn_dim=256)
REL = 5e-5  # see the module docstring
SEED, STEPS, CFG, SHIFT = 99, 6, 4.5, 5.0
WIDTH, HEIGHT, LENGTH = 96, 64, 9  # Wan2.2 VAE: 16 pixels a latent cell, 4 frames a latent frame: [1, 48, 3, 4, 6]


class _FirstFrameVAE:
    """Stands in for the Wan2.2 VAE in Wan22ImageToVideoLatent: 'encodes' any start image to a fixed latent frame of
    the VAE's scale (the node's own work, the mask and the latent it builds around the frame, is what is tested)."""

    def __init__(self, seed: int) -> None:
        self.frame = torch.randn(1, 48, 1, HEIGHT // 16, WIDTH // 16, generator=torch.Generator().manual_seed(seed))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        assert image.shape[-3:-1] == (HEIGHT, WIDTH)
        return self.frame * 0.6 - 0.1


def _native(comfyui, spec: WanSpec, seed: int):

    state = random_state_dict(spec, seed=seed)
    patcher = native_patcher(state, SHIFT)
    ours = WanModel(spec, dtype=torch.float32)
    ours.load_state_dict(state)
    return patcher, WanEngine(ours.eval(), Recipe("unused.safetensors", compute_dtype="fp32"), "cpu")


@pytest.fixture(scope="module")
def comfy(comfyui_importable):
    import comfy.latent_formats
    import comfy_extras.nodes_wan

    nodes = comfyui_nodes(comfyui_importable)
    nodes.comfy.utils.PROGRESS_BAR_ENABLED = False
    ti2v_patcher, ti2v = _native(comfyui_importable, TI2V, seed=11)
    t2v_patcher, t2v = _native(comfyui_importable, T2V, seed=12)
    assert isinstance(ti2v_patcher.model.latent_format, comfy.latent_formats.Wan22)  # ComfyUI took it as Wan2.2
    g = torch.Generator().manual_seed(3)
    return SimpleNamespace(
        nodes=nodes,
        wan=comfy_extras.nodes_wan,
        ti2v_patcher=ti2v_patcher,
        ti2v=ti2v,
        t2v_patcher=t2v_patcher,
        t2v=t2v,
        pos=torch.randn(1, 5, 4096, generator=g),
        neg=torch.randn(1, 5, 4096, generator=g),
    )


def _wan22_latent(comfy, start_image: bool) -> dict:
    image = torch.rand(1, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(4)) if start_image else None
    out = comfy.wan.Wan22ImageToVideoLatent.execute(_FirstFrameVAE(5), WIDTH, HEIGHT, LENGTH, 1, start_image=image)
    return out.result[0]


def _native_ksampler(comfy, patcher, latent: dict, sampler: str, denoise: float = 1.0) -> torch.Tensor:
    (out,) = comfy.nodes.KSampler().sample(
        patcher, SEED, STEPS, CFG, sampler, "simple", [[comfy.pos, {}]], [[comfy.neg, {}]], latent, denoise=denoise
    )
    return out["samples"]


def _dax(engine: WanEngine, latent: dict, sampler: str, **options) -> torch.Tensor:
    request = SampleRequest(
        positive=torch.clone(options.pop("pos")), negative=torch.clone(options.pop("neg")), latent=latent["samples"],
        noise_mask=latent.get("noise_mask"), seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT, sampler=sampler,
        scheduler="simple", **options,
    )  # fmt: skip
    return engine.sample(request).latent


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "uni_pc"])
@pytest.mark.parametrize("start_image", [True, False], ids=["image-to-video", "text-to-video"])
def test_ti2v_matches_native_ksampler_from_wan22_image_to_video_latent(comfy, sampler, start_image):
    latent = _wan22_latent(comfy, start_image)
    assert ("noise_mask" in latent) == start_image and latent["samples"].shape == (1, 48, 3, 4, 6)
    expected = _native_ksampler(comfy, comfy.ti2v_patcher, latent, sampler)
    got = _dax(comfy.ti2v, latent, sampler, pos=comfy.pos, neg=comfy.neg)
    assert rel_error(got, expected) < REL
    if start_image and sampler != "uni_pc":
        # the encoded first frame comes back as it went in (un-normalised, as VAEDecode takes it) where the last step
        # lands on the masked prediction; ComfyUI's UniPC corrects with a blend of predictions, natively too
        torch.testing.assert_close(got[:, :, :1], latent["samples"][:, :, :1], rtol=0, atol=1e-5)


def test_the_mask_and_its_per_frame_timesteps_both_matter(comfy):
    # what the test above would miss if they were dropped: each alone changes the result far beyond REL
    latent = _wan22_latent(comfy, True)
    expected = _native_ksampler(comfy, comfy.ti2v_patcher, latent, "euler")
    unmasked = _dax(comfy.ti2v, {"samples": latent["samples"]}, "euler", pos=comfy.pos, neg=comfy.neg)
    assert rel_error(unmasked, expected) > 1e-3
    uniform = {"samples": latent["samples"], "noise_mask": latent["noise_mask"]}
    # the same weights as a model without per-frame timesteps: the mask alone, kept part noised (WAN21's way)
    plain = WanModel(WanSpec.from_dict({**TI2V.to_dict(), "model_type": "t2v"}), dtype=torch.float32)
    plain.load_state_dict(comfy.ti2v.model.state_dict())
    engine = WanEngine(plain.eval(), comfy.ti2v.recipe, "cpu")
    assert rel_error(_dax(engine, uniform, "euler", pos=comfy.pos, neg=comfy.neg), expected) > 1e-3


@pytest.mark.parametrize("denoise", [1.0, 0.7])
def test_a_noise_mask_on_a_16_channel_model_matches_native(comfy, denoise):
    # native WAN21: no per-frame timesteps, the kept part of each step's input noised to its sigma
    g = torch.Generator().manual_seed(6)
    video = torch.randn(1, 16, 3, 4, 6, generator=g) * 2.0 + 0.3
    mask = torch.ones(1, 1, 3, 4, 6)
    mask[:, :, :, :, :3] = 0.0  # keep the left half
    mask[:, :, 2] = 0.5
    latent = {"samples": video, "noise_mask": mask}
    expected = _native_ksampler(comfy, comfy.t2v_patcher, latent, "euler", denoise)
    got = _dax(comfy.t2v, latent, "euler", pos=comfy.pos, neg=comfy.neg, denoise=denoise)
    assert rel_error(got, expected) < REL
    unmasked = _dax(comfy.t2v, {"samples": video}, "euler", pos=comfy.pos, neg=comfy.neg, denoise=denoise)
    assert rel_error(unmasked, expected) > 1e-3  # the mask matters here


@pytest.mark.parametrize(
    ("mask_shape", "latent_shape"),
    [
        ((1, 1, 3, 4, 6), (2, 48, 3, 4, 6)),  # Wan22ImageToVideoLatent's, for a batch of 2
        ((3, 8, 12), (1, 16, 3, 4, 6)),  # SetLatentNoiseMask's [frames, height, width] in pixels of the latent
        ((1, 64, 96), (1, 16, 3, 4, 6)),  # one image mask for every frame
        ((1, 16, 2, 4, 6), (1, 16, 3, 4, 6)),  # per channel, fewer frames
    ],
)
def test_a_noise_mask_is_prepared_as_comfyui_reshapes_it(comfyui_importable, mask_shape, latent_shape):
    import comfy.utils

    from dax_core.runtime.noise_mask import prepare_mask

    mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(1))
    expected = comfy.utils.reshape_mask(mask, torch.Size(latent_shape))
    assert torch.equal(prepare_mask(mask, latent_shape, "cpu"), expected)


def test_a_bad_noise_mask_is_refused_before_sampling():
    with pytest.raises(ValueError, match=r"noise_mask has shape \(1, 3, 3, 4, 6\)"):
        SampleRequest(torch.ones(1, 4, 8), None, torch.zeros(1, 48, 3, 4, 6), seed=0, steps=2, cfg=1.0,
                      noise_mask=torch.ones(1, 3, 3, 4, 6))  # fmt: skip
    with pytest.raises(ValueError, match=r"between 0 \(keep\) and 1 \(denoise\)"):
        SampleRequest(torch.ones(1, 4, 8), None, torch.zeros(1, 48, 3, 4, 6), seed=0, steps=2, cfg=1.0,
                      noise_mask=torch.full((1, 1, 3, 4, 6), 2.0))  # fmt: skip
