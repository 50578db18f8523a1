"""DAX's sampler on the conditioning WanImageToVideo / WanFirstLastFrameToVideo produce equals ComfyUI's KSampler on
ComfyUI's own WanModel (I2V, FLF2V), same weights, same seed; conditioning a model cannot take is refused first.

The tensors are the ones those nodes put in the CONDITIONING extras: ``concat_latent_image`` (a VAE latent; here a
random one at the Wan latent's scale), ``concat_mask`` (WanImageToVideo's [1, 1, T, H, W] with the start frame's
latent frame 0, FLF2V's [1, 4, T, H, W] grouping 4 video frames per latent frame) and a CLIPVisionEncode output.

Tolerance as in test_native_parity: float32 on both sides, the models agree to ~2e-6 per call (test_image_models);
through 4 steps with CFG 4.5 that stays below 5e-5. A wrong mask inversion, latent normalisation or channel order
changes the result by > 1e-2 (the test asserts that the image matters by that much).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dax_core.models.info import ModelInfo
from dax_core.models.spec import WanSpec
from dax_core.models.tiny import random_state_dict
from dax_core.models.wan import WanModel
from dax_core.recipe import Recipe
from dax_core.rules import check_request
from dax_core.runtime.engine import SampleRequest, WanEngine
from tests.numerics import rel_error
from tests.unit.comfy_native import comfyui_nodes, native_patcher
from tests.unit.node_modules import node_module

# ComfyUI reads the head count as dim // 128, the text width 4096 and the CLIP width 1280: the specs follow.
I2V = WanSpec(dim=256, num_layers=2, num_heads=2, ffn_dim=256, text_dim=4096, in_dim=36, model_type="i2v")
FLF2V = WanSpec(dim=256, num_layers=2, num_heads=2, ffn_dim=256, text_dim=4096, in_dim=36, model_type="flf2v",
                image_pos_tokens=514)  # fmt: skip
T2V = WanSpec(dim=256, num_layers=2, num_heads=2, ffn_dim=256, text_dim=4096)
REL = 5e-5  # see the module docstring
SEED, STEPS, CFG, SHIFT = 99, 4, 4.5, 5.0
FRAMES, H, W = 3, 4, 6  # latent frames (9 video frames), height and width


@pytest.fixture(scope="module")
def comfy(comfyui_importable):
    import comfy.clip_vision
    import node_helpers

    nodes = comfyui_nodes(comfyui_importable)
    return SimpleNamespace(clip_vision=comfy.clip_vision, nodes=nodes,
                           helpers=node_helpers, sampler=node_module("sampler"))  # fmt: skip


def _native_model(comfy, spec: WanSpec, state: dict[str, torch.Tensor]):
    patcher = native_patcher(state, SHIFT)
    assert type(patcher.model).__name__ == "WAN21" and patcher.model.image_to_video  # ComfyUI's I2V (FLF2V too)
    assert (patcher.model.diffusion_model.img_emb.emb_pos is not None) == (spec.model_type == "flf2v")
    return patcher


def _image_conditioning(comfy, spec: WanSpec, seed: int):
    """What WanImageToVideo (one start frame) or WanFirstLastFrameToVideo (start and end frames) add."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 16, FRAMES, H, W, generator=g) * 2.0 + 0.3
    images = 2 if spec.model_type == "flf2v" else 1
    if spec.model_type == "flf2v":  # per video frame, 4 to a latent frame: the first and the last frame known
        mask = torch.ones(1, 1, FRAMES * 4, H, W)
        mask[:, :, :4] = 0.0
        mask[:, :, -1:] = 0.0
        mask = mask.view(1, FRAMES, 4, H, W).transpose(1, 2)
    else:
        mask = torch.ones(1, 1, FRAMES, H, W)
        mask[:, :, :1] = 0.0
    output = comfy.clip_vision.Output()
    output.penultimate_hidden_states = torch.randn(1, 257 * images, 1280, generator=g)
    return {"concat_latent_image": image, "concat_mask": mask, "clip_vision_output": output}


def _conds(comfy, seed: int, extras: dict):
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.randn(1, 6, 4096, generator=g), torch.randn(1, 6, 4096, generator=g)
    positive = comfy.helpers.conditioning_set_values([[pos, {}]], extras)
    negative = comfy.helpers.conditioning_set_values([[neg, {}]], extras)
    return positive, negative


def _dax(comfy, spec: WanSpec, state, positive, negative, latent, sampler: str) -> torch.Tensor:
    recipe = Recipe("unused.safetensors", compute_dtype="fp32", model=ModelInfo.of(spec))
    ours = WanModel(spec, dtype=torch.float32)
    ours.load_state_dict(state)
    engine = WanEngine(ours.eval(), recipe, "cpu")
    fields = comfy.sampler._conditioning(recipe, positive, negative, latent)  # the node's own reading of the extras
    request = SampleRequest(**fields, latent=latent, seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT, sampler=sampler,
                            scheduler="simple")  # fmt: skip
    return engine.sample(request).latent


@pytest.mark.parametrize("sampler", ["euler", "uni_pc"])
@pytest.mark.parametrize("spec", [I2V, FLF2V], ids=["i2v", "flf2v"])
def test_sampler_matches_native_ksampler_on_image_conditioning(comfy, spec, sampler):
    state = random_state_dict(spec, seed=5)
    patcher = _native_model(comfy, spec, state)
    extras = _image_conditioning(comfy, spec, 6)
    positive, negative = _conds(comfy, 7, extras)
    latent = torch.zeros(1, 16, FRAMES, H, W)  # WanImageToVideo's latent output
    (native,) = comfy.nodes.KSampler().sample(patcher, SEED, STEPS, CFG, sampler, "simple", positive, negative,
                                              {"samples": latent})  # fmt: skip
    ours = _dax(comfy, spec, state, positive, negative, latent, sampler)
    assert rel_error(ours, native["samples"]) < REL
    other = _image_conditioning(comfy, spec, 8)  # another image: far beyond the tolerance
    (moved,) = comfy.nodes.KSampler().sample(patcher, SEED, STEPS, CFG, sampler, "simple", *_conds(comfy, 7, other),
                                             {"samples": latent})  # fmt: skip
    assert rel_error(moved["samples"], native["samples"]) > 1e-2


def _request(comfy, spec: WanSpec, extras: dict | None, cfg: float = CFG) -> SampleRequest:
    positive, negative = _conds(comfy, 1, extras or {})
    latent = torch.zeros(1, 16, FRAMES, H, W)
    fields = comfy.sampler._conditioning(Recipe("x.safetensors", model=ModelInfo.of(spec)), positive, negative, latent)
    return SampleRequest(**fields, latent=latent, seed=0, steps=4, cfg=cfg)


def test_image_conditioning_on_a_text_to_video_model_is_refused_by_the_rules(comfy):
    request = _request(comfy, T2V, _image_conditioning(comfy, I2V, 0))
    with pytest.raises(ValueError, match=r"takes none: load a Wan2\.1 image-to-video"):
        check_request(request, T2V)


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        (("concat_latent_image", "concat_mask", "clip_vision_output"), "needs the start image"),
        (("clip_vision_output",), "needs the CLIP-vision features of its image: connect CLIPVisionEncode"),
    ],
)
def test_an_image_model_without_its_image_is_refused_by_the_rules(comfy, drop, message):
    extras = {k: v for k, v in _image_conditioning(comfy, I2V, 0).items() if k not in drop}
    with pytest.raises(ValueError, match=message):
        check_request(_request(comfy, I2V, extras), I2V)


def test_cfg_1_needs_the_positive_branch_image_only(comfy):
    check_request(_request(comfy, I2V, _image_conditioning(comfy, I2V, 0), cfg=1.0), I2V)


def test_conditioning_of_variants_dax_does_not_run_is_refused_by_name(comfy):
    positive, negative = _conds(comfy, 1, {"time_dim_concat": torch.zeros(1, 16, 1, H, W)})
    with pytest.raises(ValueError, match=r"time_dim_concat \(Phantom"):
        comfy.sampler._conditioning(Recipe("x.safetensors", model=ModelInfo.of(T2V)), positive, negative,
                                    torch.zeros(1, 16, FRAMES, H, W))  # fmt: skip


@pytest.mark.parametrize("size", [(H + 2, W), (H * 2, W * 2 + 3), (H - 1, W - 2)])
def test_an_image_latent_of_another_size_is_resized_as_comfyui_resizes_it(comfy, size):
    """ComfyUI's WAN21 model brings concat_latent_image and concat_mask to the noise's height and width (centre crop,
    bilinear): so does DAX, and sampling from them equals the native KSampler's (bound as above); the same latent
    resized by hand to the right size first gives the same input channels."""
    from comfy.utils import common_upscale

    spec = I2V
    state = random_state_dict(spec, seed=5)
    extras = _image_conditioning(comfy, spec, 6)
    g = torch.Generator().manual_seed(12)
    extras["concat_latent_image"] = torch.randn(1, 16, FRAMES, *size, generator=g)
    extras["concat_mask"] = torch.rand(1, 1, FRAMES, *size, generator=g)
    positive, negative = _conds(comfy, 7, extras)
    latent = torch.zeros(1, 16, FRAMES, H, W)
    (native,) = comfy.nodes.KSampler().sample(_native_model(comfy, spec, state), SEED, STEPS, CFG, "euler", "simple",
                                              positive, negative, {"samples": latent})  # fmt: skip
    ours = _dax(comfy, spec, state, positive, negative, latent, "euler")
    assert rel_error(ours, native["samples"]) < REL
    recipe = Recipe("x.safetensors", model=ModelInfo.of(spec))
    by_hand = {k: common_upscale(extras[k], W, H, "bilinear", "center") for k in ("concat_latent_image",
                                                                                           "concat_mask")}  # fmt: skip
    fields = comfy.sampler._conditioning(recipe, positive, negative, latent)
    expected = comfy.sampler._conditioning(recipe, *_conds(comfy, 7, {**extras, **by_hand}), latent)
    # the same channels, but for float32 rounding: the mask is inverted before it is resized here, after it there
    torch.testing.assert_close(fields["positive_image"], expected["positive_image"], rtol=1e-6, atol=1e-6)


def test_the_owner_refuses_image_conditioning_before_any_engine_or_group(comfy):
    """The node's first check (``Sampling.prepare``: ``dax_core.rules.check_run``) is made before any weight loads; the
    recipe's file does not exist, so reading it (or starting ranks that would) fails differently."""
    request = _request(comfy, T2V, _image_conditioning(comfy, I2V, 0))
    recipe = Recipe("/nowhere/t2v.safetensors", model=ModelInfo.of(T2V))
    for gpus in (1, 2):
        with pytest.raises(ValueError, match="takes none"):
            comfy.sampler.SAMPLING.prepare(recipe, request, gpus)
