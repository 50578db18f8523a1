"""Every lever on the image-to-video variants: quantization keeps the image embedding, the attention backends run
the image cross-attention too, TeaCache / MagCache take the published I2V settings (the user names the resolution),
compile traces the image tokens once, LoRAs reach k_img, v_img and the image embedding."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dax_core.attention import SDPA_DEFAULT
from dax_core.cache.config import MagcacheConfig, TeacacheConfig
from dax_core.compile import CompileConfig, compile_blocks
from dax_core.lora import lora_ref, plan_lora
from dax_core.lora.merge import recipe_deltas
from dax_core.lora.tiny import FORMATS, random_lora, write_tiny_lora
from dax_core.models import ops
from dax_core.models.info import ModelInfo
from dax_core.models.loading import load_wan_model, read_parameters
from dax_core.models.spec import PRESETS, WanSpec
from dax_core.models.tiny import random_state_dict, tiny_spec, write_tiny_model
from dax_core.models.wan import WanLinear, WanModel
from dax_core.quant import QuantLinear
from dax_core.quant.config import QuantizeConfig
from dax_core.recipe import Recipe, RecipeError
from dax_core.rules import check_recipe
from dax_core.runtime.engine import SampleRequest, WanEngine
from tests.numerics import rel_error
from tests.unit.test_compile import CountingBackend

CLIP = 32
I2V = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=32, in_dim=36, model_type="i2v", clip_dim=CLIP)
FLF2V = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=32, in_dim=36, model_type="flf2v",
                clip_dim=CLIP, image_pos_tokens=10)  # fmt: skip


def _model(spec: WanSpec, seed: int = 0) -> WanModel:
    model = WanModel(spec, dtype=torch.float32)
    model.load_state_dict(random_state_dict(spec, seed))
    return model.eval()


def _inputs(spec: WanSpec, seed: int = 1, image_tokens: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, spec.in_dim, 2, 4, 6, generator=g)
    ctx = torch.randn(2, 6, spec.text_dim, generator=g)
    return x, torch.tensor([700.0, 300.0]), ctx, torch.randn(2, image_tokens, spec.clip_dim, generator=g)


# -- quantization ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [I2V, FLF2V], ids=["i2v", "flf2v"])
def test_quantization_keeps_the_image_embedding_and_quantizes_the_image_attention(spec):
    model = _model(spec)
    x, t, ctx, clip = _inputs(spec)
    with torch.no_grad():
        reference = model(x, t, ctx, clip_fea=clip)
    config = QuantizeConfig(dtype="int8")  # the node's default keep list, which names no image module
    config.check(spec)
    config.apply(model, type("Env", (), {"device": torch.device("cpu"), "world_size": 1})())
    assert all(isinstance(m, WanLinear) for m in model.img_emb.proj if isinstance(m, torch.nn.Linear))
    assert isinstance(model.blocks[0].cross_attn.k_img, QuantLinear)
    assert isinstance(model.blocks[1].cross_attn.v_img, QuantLinear)
    with torch.no_grad():
        quantized = model(x, t, ctx, clip_fea=clip)
    # int8 per token and per channel on every block linear: a few 1e-3 relative; a broken image path is O(1)
    assert rel_error(quantized, reference) < 3e-2


# -- attention backends ---------------------------------------------------------------------------------------------


def test_the_cross_attention_kernel_runs_the_image_attention_too():
    model = _model(I2V)
    calls: list[tuple[int, int]] = []

    def counting(q, k, v):
        calls.append((q.shape[1], k.shape[1]))
        return SDPA_DEFAULT(q, k, v)

    x, t, ctx, clip = _inputs(I2V, image_tokens=5)
    with torch.no_grad():
        reference = model(x, t, ctx, clip_fea=clip)
        model.set_attention(SDPA_DEFAULT, counting)
        counted = model(x, t, ctx, clip_fea=clip)
    tokens = 2 * 2 * 3  # frames x (4 / 2) x (6 / 2) patches
    assert calls == [(tokens, 6), (tokens, 5)] * I2V.num_layers  # the text, then the image tokens, in every block
    assert torch.equal(counted, reference)


class _RecordingInputs:
    """A ``BoundAttention.prepared`` (the kernels that prepare their own inputs, as SageAttention2's fused inputs do)
    computing what the plain path computes, and recording the keys it is given."""

    def __init__(self) -> None:
        self.keys: list[int] = []

    def query(self, x, weight, rope, heads, eps):
        return ops.rms_norm(x, weight, eps).unflatten(-1, (heads, -1))

    def key(self, x, weight, rope, heads, eps):
        self.keys.append(x.shape[1])
        return ops.rms_norm(x, weight, eps).unflatten(-1, (heads, -1))

    def value(self, v, heads):
        return v.unflatten(-1, (heads, -1))

    def attend(self, q, k, v, scale=None):
        return SDPA_DEFAULT(q, k, v)


def test_kernels_that_prepare_their_inputs_run_the_image_attention_too():
    model = _model(I2V)
    x, t, ctx, clip = _inputs(I2V, image_tokens=5)
    inputs = _RecordingInputs()
    with torch.no_grad():
        reference = model(x, t, ctx, clip_fea=clip)
        model.set_attention(SDPA_DEFAULT, dataclasses.replace(SDPA_DEFAULT, prepared=inputs))
        prepared = model(x, t, ctx, clip_fea=clip)
    assert inputs.keys == [6, 5] * I2V.num_layers
    assert torch.equal(prepared, reference)


# -- step caches ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [TeacacheConfig(), MagcacheConfig()], ids=["teacache", "magcache"])
def test_step_caches_ask_which_resolution_an_i2v_model_is(config):
    spec = PRESETS["wan2.1-i2v-14b"]
    recipe = Recipe("i2v.safetensors", model=ModelInfo.of(spec)).with_acceleration(config)
    with pytest.raises(RecipeError, match=r"480p and 720p files have the same shapes.*wan2\.1-i2v-14b-480p or "):
        check_recipe(recipe, spec)  # on the owner, before anything loads


def test_teacache_takes_the_published_i2v_polynomials():
    # TeaCache4Wan2.1's polynomials for Wan2.1-I2V-14B-480P and -720P (dax_core/cache/coefficients.py cites them)
    spec = PRESETS["wan2.1-i2v-14b"]
    for size, first in (("480p", 2.57151496e05), ("720p", 8.10705460e03)):
        config = TeacacheConfig(model=f"wan2.1-i2v-14b-{size}")
        check_recipe(Recipe("i2v.safetensors").with_acceleration(config), spec)
        assert config.resolve_coefficients(spec.name)[0] == first


def test_flf2v_has_no_published_step_cache_settings():
    spec = PRESETS["wan2.1-flf2v-14b"]
    with pytest.raises(RecipeError, match=r"no published coefficients for a wan2\.1-flf2v-14b model"):
        check_recipe(Recipe("flf2v.safetensors").with_acceleration(TeacacheConfig()), spec)


# -- compile ----------------------------------------------------------------------------------------------------------


def test_one_compiled_graph_serves_every_step_with_the_image_tokens(fresh_dynamo):
    model = _model(I2V, 3)
    g = torch.Generator().manual_seed(4)
    request = SampleRequest(
        positive=torch.randn(1, 5, I2V.text_dim, generator=g), negative=torch.randn(1, 5, I2V.text_dim, generator=g),
        latent=torch.zeros(1, 16, 2, 4, 6), seed=1, steps=3, cfg=5.0, sampler="euler",
        positive_image=torch.randn(1, 20, 2, 4, 6, generator=g), positive_clip=torch.randn(1, 7, CLIP, generator=g),
        negative_image=torch.randn(1, 20, 2, 4, 6, generator=g), negative_clip=torch.randn(1, 7, CLIP, generator=g),
    )  # fmt: skip
    eager = WanEngine(model, Recipe("unused.safetensors", compute_dtype="fp32"), "cpu").sample(request).latent
    counter = CountingBackend()
    compile_blocks(model, CompileConfig(), backend=counter)
    engine = WanEngine(model, Recipe("unused.safetensors", compute_dtype="fp32"), "cpu")
    compiled = engine.sample(request).latent
    engine.sample(request)
    assert counter.graphs == 1  # 3 steps x 2 blocks x 2 prompts, both branches batched: one graph
    assert torch.equal(compiled, eager)  # the traced graph runs the same ops


# -- LoRA -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_loras_reach_the_image_attention_and_the_image_embedding(tmp_path, fmt):
    spec = tiny_spec("i2v", clip_dim=CLIP, text_dim=32)
    weights = write_tiny_model(tmp_path / "i2v.safetensors", variant="i2v", clip_dim=CLIP, text_dim=32, dtype="fp32")
    path = write_tiny_lora(tmp_path / f"lora_{fmt}.safetensors", spec, fmt=fmt, dtype=torch.float32)
    plan = plan_lora(str(path), spec)
    assert not plan.unmatched
    targets = {"blocks.0.cross_attn.k_img.weight", "blocks.1.cross_attn.v_img.weight",
               "blocks.0.cross_attn.norm_k_img.weight", "img_emb.proj.1.weight", "img_emb.proj.3.bias",
               "img_emb.proj.0.weight"}  # fmt: skip
    recipe = Recipe(str(weights), compute_dtype="fp32", loras=(lora_ref(str(path), 0.5),), model=ModelInfo.of(spec))
    with recipe_deltas(recipe) as deltas:
        assert targets <= set(deltas.params)
        merged = dict(
            load_wan_model(weights, device="cpu", compute_dtype=torch.float32, deltas=deltas).named_parameters()
        )
    base = {name: value for name, value, _ in read_parameters(weights, sorted(targets), device="cpu",
                                                              compute_dtype=torch.float32)}  # fmt: skip
    lora = random_lora(spec)
    for name in sorted(targets):
        module = name.rsplit(".", 1)[0]
        if name.endswith(".bias"):
            change = lora[f"{module}.diff_b"].double()
        elif f"{module}.lora_up.weight" in lora:
            change = lora[f"{module}.lora_up.weight"].double() @ lora[f"{module}.lora_down.weight"].double()
        else:
            change = lora[f"{module}.diff"].double()
        expected = base[name].double() + 0.5 * change
        # float32 merge of float32 tensors: one rounding of the sum (2^-24 relative); a missed key is off by ~5 %
        assert rel_error(merged[name], expected) < 1e-6, name
