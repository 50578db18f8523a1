"""Wan2.2 I2V A14B: an image-to-video DiT of 36 input channels without CLIP features (no image embedding, no image
cross-attention), against ComfyUI, which runs such a file as its WanModel with in_dim 36 and text-only
cross-attention (model_detection: no ``img_emb`` -> model_type "t2v"; model_base.WAN21 with image_to_video False
concatenates WanImageToVideo's mask and image latent all the same).

Tolerances. The model, float32 on both sides with the same weights, 1e-5 relative: the largest rounding is the
references' time embedding, the sinusoid of t * f taken in float32 (ours in float64), an angle off by up to
t * 2^-24 rad (3e-5 at t = 400), carried into the output at ~5e-3 of its size by the modulation, plus each op's own
2^-24 ~ 6e-8 through two blocks: a few 1e-6 (as in test_image_models, whose I2V model differs from this one by the
image attention alone). Sampling, 5e-5 (as test_image_sampling and test_wan22_experts): ~2e-6 per model call through
at most 8 steps with CFG 4.5. Another start image, or a switch of experts one step off, moves the result by more
than 1e-2 / 1e-3 (asserted, so the equalities cannot hold by accident).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from dax_core.experts import MODEL_CHOICES
from dax_core.models.info import ModelInfo
from dax_core.models.loading import WeightsError, inspect_weights
from dax_core.models.naming import wan_to_diffusers
from dax_core.models.spec import PRESETS, WanSpec
from dax_core.models.tiny import random_state_dict, write_tiny_model
from dax_core.models.wan import WanModel
from dax_core.recipe import Recipe, RecipeError
from dax_core.rules import check_recipe, check_request
from dax_core.runtime.engine import SampleRequest, WanEngine
from dax_core.runtime.expert_pair import ExpertPair
from dax_core.runtime.model_info import recipe_spec
from dax_core.runtime.schedules import expert_switch_step, ksampler_sigmas
from tests.numerics import rel_error
from tests.unit.comfy_native import comfyui_nodes, native_patcher
from tests.unit.node_modules import node_module

TOL, REL = 1e-5, 5e-5  # see the module docstring
SMALL = WanSpec(dim=96, num_layers=2, num_heads=4, ffn_dim=192, text_dim=64, freq_dim=32, in_dim=36,
                model_type="i2v", clip_dim=0)  # fmt: skip
# ComfyUI reads a Wan head count of dim // 128 and a text width of 4096: the sampling tests' spec follows
NOCLIP = WanSpec(dim=256, num_layers=2, num_heads=2, ffn_dim=256, in_dim=36, model_type="i2v", clip_dim=0)
BOUNDARY = MODEL_CHOICES["wan2.2-i2v-a14b"].boundary
SEED, STEPS, CFG, SHIFT = 17, 8, 4.5, 5.0  # wan/configs/wan_i2v_A14B.py: sample_shift 5.0
WIDTH, HEIGHT, LENGTH = 48, 32, 9  # Wan2.1 VAE: 8 pixels a latent cell, 4 frames a latent frame: [1, 16, 3, 4, 6]
CLIP_NOTE = "clip_vision_output ignored"


# -- the model --------------------------------------------------------------------------------------------------------


def _state(spec: WanSpec, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = WanModel(spec, device="meta", dtype=torch.float32)
    return {k: torch.randn(v.shape, generator=g) * 0.2 + (1.0 if "norm" in k else 0.0)
            for k, v in model.state_dict().items()}  # fmt: skip


def _ours(spec: WanSpec, state: dict[str, torch.Tensor]) -> WanModel:
    model = WanModel(spec, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _inputs(seed: int, text_tokens: int = 7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 36, 3, 6, 10, generator=g)  # odd frames, 3 x 5 patches; noise, mask, image latent
    return x, torch.tensor([400.0, 60.0]), torch.randn(2, text_tokens, SMALL.text_dim, generator=g)


def test_the_preset_has_no_image_modules_and_its_parameter_count():
    spec = PRESETS["wan2.2-i2v-a14b"]
    assert spec.name == "wan2.2-i2v-a14b" and spec.takes_image_latent and not spec.takes_clip
    names = list(WanModel(spec, device="meta").state_dict())
    assert not any("img" in n for n in names)
    assert spec.parameter_count() == sum(p.numel() for p in WanModel(spec, device="meta").parameters())
    # Wan2.1 T2V 14B plus the patch embedding's 20 more input channels
    assert spec.parameter_count() - PRESETS["wan2.1-t2v-14b"].parameter_count() == 20 * 4 * 5120


def test_matches_comfyui_native_wan_model_with_36_channels_and_text_cross_attention(comfyui_importable):
    import comfy.ldm.wan.model
    import comfy.ops

    state = _state(SMALL, 2)
    ref = comfy.ldm.wan.model.WanModel(
        model_type="t2v", in_dim=36, dim=SMALL.dim, ffn_dim=SMALL.ffn_dim, freq_dim=SMALL.freq_dim,
        text_dim=SMALL.text_dim, num_heads=SMALL.num_heads, num_layers=SMALL.num_layers, dtype=torch.float32,
        operations=comfy.ops.disable_weight_init,
    ).eval()  # fmt: skip
    ref.load_state_dict(state, strict=True)  # the same names, none left over on either side
    x, t, ctx = _inputs(3)
    clip = torch.randn(2, 257, 1280, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = _ours(SMALL, state)(x, t, ctx)
        theirs = ref(x, t, ctx)
        with_clip = ref(x, t, ctx, clip_fea=clip)  # ComfyUI's model without img_emb does not use them
        other_image = ref(torch.cat([x[:, :20], torch.randn_like(x[:, 20:])], 1), t, ctx)
    assert ours.shape == (2, 16, 3, 6, 10)
    assert rel_error(ours, theirs) <= TOL
    assert torch.equal(with_clip, theirs)
    assert rel_error(other_image, theirs) > 1e3 * TOL  # the image latent channels matter


def test_matches_diffusers_transformer_with_36_channels_and_no_image_embedder():
    import diffusers  # a test dependency: missing, it is a failure, not a skip

    state = _state(SMALL, 0)
    ref = diffusers.WanTransformer3DModel(
        num_attention_heads=SMALL.num_heads, attention_head_dim=SMALL.head_dim, in_channels=36,
        text_dim=SMALL.text_dim, freq_dim=SMALL.freq_dim, ffn_dim=SMALL.ffn_dim, num_layers=SMALL.num_layers,
    ).eval()  # fmt: skip
    assert ref.condition_embedder.image_embedder is None
    ref.load_state_dict({wan_to_diffusers(k): v for k, v in state.items()}, strict=True)
    x, t, ctx = _inputs(1)
    with torch.no_grad():
        ours = _ours(SMALL, state)(x, t, ctx)
        theirs = ref(x, t, ctx, return_dict=False)[0]
    assert rel_error(ours, theirs) <= TOL


def test_the_model_itself_refuses_clip_features():
    x, t, ctx = _inputs(0)
    with pytest.raises(ValueError, match="no image cross-attention"):
        _ours(SMALL, _state(SMALL, 0))(x, t, ctx, clip_fea=torch.randn(2, 5, 1280))


# -- the sampler on WanImageToVideo's conditioning --------------------------------------------------------------------


class _StartFrameVAE:
    """Stands in for the Wan2.1 VAE in WanImageToVideo: 'encodes' the node's video (the start frame, grey after it)
    to a fixed latent of the VAE's scale and shape; the node's own work (the mask, the extras) is what is used."""

    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.latent = torch.randn(1, 16, (LENGTH - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8, generator=g) * 0.8 - 0.2

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        assert video.shape == (LENGTH, HEIGHT, WIDTH, 3)
        return self.latent


def _native(spec: WanSpec, seed: int):

    state = random_state_dict(spec, seed=seed)
    patcher = native_patcher(state, SHIFT)
    # ComfyUI's reading of such a file: the Wan2.1 model class, not image_to_video, no image embedding
    assert type(patcher.model).__name__ == "WAN21" and not patcher.model.image_to_video
    assert patcher.model.diffusion_model.img_emb is None
    return patcher, _ours(spec, state)


PAIR = Recipe("high.safetensors", compute_dtype="fp32", model_choice="wan2.2-i2v-a14b",
              low_noise_weights="low.safetensors", model=ModelInfo.of(NOCLIP))  # fmt: skip


@pytest.fixture(scope="module")
def comfy(comfyui_importable):
    import comfy.clip_vision
    import comfy.samplers
    import comfy_extras.nodes_wan

    nodes = comfyui_nodes(comfyui_importable)
    nodes.comfy.utils.PROGRESS_BAR_ENABLED = False
    (high_patcher, high), (low_patcher, low) = _native(NOCLIP, 41), _native(NOCLIP, 42)
    engines = {"high": WanEngine(high, PAIR.expert("high"), "cpu"), "low": WanEngine(low, PAIR.expert("low"), "cpu")}
    g = torch.Generator().manual_seed(3)
    return SimpleNamespace(
        nodes=nodes, wan=comfy_extras.nodes_wan, clip_vision=comfy.clip_vision, samplers=comfy.samplers,
        sampler=node_module("sampler"), high_patcher=high_patcher, low_patcher=low_patcher, engines=engines,
        pair=ExpertPair(PAIR, engines), pos=torch.randn(1, 6, 4096, generator=g),
        neg=torch.randn(1, 6, 4096, generator=g),
    )  # fmt: skip


def _image_to_video(comfy, image_seed: int, clip: bool = False):
    """WanImageToVideo's outputs (positive, negative, latent) for a random start image, with a CLIPVisionEncode
    output connected or not."""
    start = torch.rand(1, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(image_seed))
    output = None
    if clip:
        output = comfy.clip_vision.Output()
        output.penultimate_hidden_states = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(5))
    vae = _StartFrameVAE(image_seed)
    out = comfy.wan.WanImageToVideo.execute([[comfy.pos, {}]], [[comfy.neg, {}]], vae, WIDTH, HEIGHT, LENGTH, 1,
                                            start_image=start, clip_vision_output=output)  # fmt: skip
    positive, negative, latent = out.result
    assert "concat_latent_image" in positive[0][1] and ("clip_vision_output" in positive[0][1]) == clip
    return positive, negative, latent


def _request(comfy, recipe: Recipe, conditioning, sampler: str, **options) -> SampleRequest:
    positive, negative, latent = conditioning
    fields = comfy.sampler._conditioning(recipe, positive, negative, latent["samples"])  # the node's own reading
    return SampleRequest(**fields, latent=latent["samples"], seed=SEED, steps=STEPS, cfg=CFG, shift=SHIFT,
                         sampler=sampler, scheduler="simple", **options)  # fmt: skip


def _native_ksampler(comfy, patcher, conditioning, sampler: str) -> torch.Tensor:
    positive, negative, latent = conditioning
    (out,) = comfy.nodes.KSampler().sample(patcher, SEED, STEPS, CFG, sampler, "simple", positive, negative, latent)
    return out["samples"]


ONE = Recipe("expert.safetensors", compute_dtype="fp32", model_choice="wan2.2-i2v-a14b-high",
             model=ModelInfo.of(NOCLIP))  # fmt: skip


@pytest.mark.parametrize("sampler", ["euler", "uni_pc"])
def test_one_expert_matches_native_ksampler_on_wan_image_to_video(comfy, sampler):
    conditioning = _image_to_video(comfy, 6)
    expected = _native_ksampler(comfy, comfy.high_patcher, conditioning, sampler)
    result = comfy.engines["high"].sample(_request(comfy, ONE, conditioning, sampler))
    assert rel_error(result.latent, expected) < REL
    assert not any(CLIP_NOTE in n for n in result.notes)
    moved = _native_ksampler(comfy, comfy.high_patcher, _image_to_video(comfy, 7), sampler)  # another start image
    assert rel_error(moved, expected) > 1e-2


def test_clip_vision_output_is_ignored_as_natively_and_the_summary_says_so(comfy):
    with_clip, without = _image_to_video(comfy, 6, clip=True), _image_to_video(comfy, 6)
    expected = _native_ksampler(comfy, comfy.high_patcher, with_clip, "euler")
    assert torch.equal(expected, _native_ksampler(comfy, comfy.high_patcher, without, "euler"))
    request = _request(comfy, ONE, with_clip, "euler")
    assert request.positive_clip is not None  # carried to the engine, which decides with the model's spec
    result = comfy.engines["high"].sample(request)
    assert rel_error(result.latent, expected) < REL
    assert any(CLIP_NOTE in line for line in result.summary_lines())


def _native_chain(comfy, conditioning, sampler: str, switch: int) -> torch.Tensor:
    """ComfyUI's Wan2.2 I2V workflow: KSamplerAdvanced on the high-noise expert for steps 0..switch with leftover
    noise, then on the low-noise expert from switch on, adding no noise."""
    positive, negative, latent = conditioning
    advanced = comfy.nodes.KSamplerAdvanced()
    (first,) = advanced.sample(comfy.high_patcher, "enable", SEED, STEPS, CFG, sampler, "simple", positive, negative,
                               latent, 0, switch, "enable")  # fmt: skip
    (second,) = advanced.sample(comfy.low_patcher, "disable", SEED, STEPS, CFG, sampler, "simple", positive,
                                negative, first, switch, 10000, "disable")  # fmt: skip
    return second["samples"]


def test_the_switch_is_at_the_official_i2v_boundary():
    # wan/configs/wan_i2v_A14B.py boundary 0.900, sample_shift 5.0: 8 steps switch at step 3, 40 steps at step 15
    assert BOUNDARY == 0.900
    assert expert_switch_step(ksampler_sigmas("simple", STEPS, SHIFT), BOUNDARY) == 3
    assert expert_switch_step(ksampler_sigmas("simple", 40, SHIFT), BOUNDARY) == 15


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "uni_pc"])
def test_the_two_expert_pair_equals_two_chained_native_samplers(comfy, sampler):
    sampling = comfy.high_patcher.get_model_object("model_sampling")
    if sampler in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS:  # KSampler's schedule for uni_pc
        native_sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS + 1)
        native_sigmas = torch.cat([native_sigmas[:-2], native_sigmas[-1:]])
    else:
        native_sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS)
    switch = expert_switch_step(native_sigmas, BOUNDARY)
    assert switch == (4 if sampler == "uni_pc" else 3)
    conditioning = _image_to_video(comfy, 6)
    request = _request(comfy, PAIR, conditioning, sampler)
    assert expert_switch_step(request.schedule_sigmas(), BOUNDARY) == switch
    result = comfy.pair.sample(request)
    assert rel_error(result.latent, _native_chain(comfy, conditioning, sampler, switch)) < REL
    assert any(f"high-noise expert {switch}, low-noise expert {STEPS - switch} steps" in n for n in result.notes)
    if sampler == "euler":  # a switch one step off is a different run
        for other in (switch - 1, switch + 1):
            assert rel_error(result.latent, _native_chain(comfy, conditioning, sampler, other)) > 1e-3


# -- the rules, on the owner ------------------------------------------------------------------------------------------


def test_no_start_image_is_refused_saying_no_clip_vision_is_needed(comfy):
    positive, negative, latent = comfy.wan.WanImageToVideo.execute(
        [[comfy.pos, {}]], [[comfy.neg, {}]], None, WIDTH, HEIGHT, LENGTH, 1
    ).result  # no start image: no image extras
    request = _request(comfy, ONE, (positive, negative, latent), "euler")
    with pytest.raises(ValueError, match=r"needs the start image.*no CLIP vision needed"):
        check_request(request, NOCLIP)
    for gpus in (1, 2):  # the node's first check, before any weight loads (the file does not exist)
        with pytest.raises(ValueError, match="needs the start image"):
            comfy.sampler.SAMPLING.prepare(dataclasses.replace(ONE, weights="/nowhere/high.safetensors"), request, gpus)


def test_image_conditioning_of_other_channels_is_refused(comfy):
    request = _request(comfy, ONE, _image_to_video(comfy, 6), "euler")
    bad = dataclasses.replace(request, positive_image=request.positive_image[:, :8])
    with pytest.raises(ValueError, match=r"has 8 channels, this model takes 20.*no CLIP vision needed"):
        check_request(bad, NOCLIP)


@pytest.mark.parametrize(
    ("file_kind", "choice", "message"),
    [
        ({"variant": "i2v", "clip_dim": 32}, "wan2.2-i2v-a14b-high", "i2v model with CLIP-vision features"),
        ({"variant": "i2v", "clip_dim": 0}, "wan2.2-t2v-a14b-low", "not a t2v expert"),
        ({"variant": "t2v"}, "wan2.2-i2v-a14b-high", "a t2v model"),
    ],
)
def test_a_file_that_is_not_an_i2v_a14b_expert_is_refused_by_the_model_choice(tmp_path, file_kind, choice, message):
    path = write_tiny_model(tmp_path / "m.safetensors", **file_kind)
    with pytest.raises(WeightsError, match=message):
        recipe_spec(Recipe(str(path), model_choice=choice, model=inspect_weights(path).model))


def test_an_i2v_a14b_expert_file_is_accepted_and_step_caches_are_refused(tmp_path):
    from dax_core.cache.config import MagcacheConfig, TeacacheConfig

    path = write_tiny_model(tmp_path / "m.safetensors", variant="i2v", clip_dim=0)
    for choice in ("auto", "wan2.2-i2v-a14b-high", "wan2.2-i2v-a14b-low"):
        recipe = Recipe(str(path), model_choice=choice, model=inspect_weights(path).model)
        spec = recipe_spec(recipe)
        assert not spec.takes_clip
        for cache in (TeacacheConfig(), MagcacheConfig()):  # Wan2.1's calibrations; none published for Wan2.2
            with pytest.raises(RecipeError, match=r"no published calibration for (Wan2\.2 I2V A14B)"):
                check_recipe(recipe.with_acceleration(cache), spec)


# -- a worker group --------------------------------------------------------------------------------------------------


def test_a_two_rank_group_of_the_i2v_expert_equals_one_process(tmp_path):
    from dax_core.runtime.distributed import parallel_layout
    from dax_core.runtime.group import GroupConfig, WorkerGroup
    from tests.unit.group_helpers import TINY, assert_all_gone, assert_same_latent, group_processes, in_process

    path = write_tiny_model(tmp_path / "high.safetensors", variant="i2v", clip_dim=0, dtype="fp32", **TINY)
    recipe = Recipe(str(path), compute_dtype="fp32", model_choice="wan2.2-i2v-a14b-high",
                    model=inspect_weights(path).model)  # fmt: skip
    g = torch.Generator().manual_seed(3)
    text, image = (1, 6, TINY["text_dim"]), (1, 20, 2, 8, 8)
    request = SampleRequest(
        positive=torch.randn(text, generator=g), negative=torch.randn(text, generator=g),
        latent=torch.zeros(1, 16, 2, 8, 8), seed=4, steps=3, cfg=5.0, sampler="euler",
        positive_image=torch.randn(image, generator=g), negative_image=torch.randn(image, generator=g),
        positive_clip=torch.randn(1, 9, 1280, generator=g), negative_clip=torch.randn(1, 9, 1280, generator=g),
    )  # fmt: skip
    with WorkerGroup(recipe, GroupConfig(2, device="cpu", parallel=parallel_layout(2))) as group:
        procs = group_processes(group)
        got, expected = group.sample(request), in_process(recipe, request)
        assert_same_latent(got, expected)
        assert any(CLIP_NOTE in n for n in got.notes) and any(CLIP_NOTE in n for n in expected.notes)
        with pytest.raises(ValueError, match="needs the start image"):
            group.sample(dataclasses.replace(request, positive_image=None))
        assert group.alive  # refused on the owner: no rank saw it
    assert_all_gone(procs)
