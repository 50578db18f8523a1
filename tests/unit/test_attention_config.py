"""The attention recipe entry, ATTENTION_BACKEND, applying to a model, and the Set Attention Backend node."""

from __future__ import annotations

import json

import pytest
import torch

from dax_core.accelerations import CONFIG_MODULES, BuildEnv, apply_accelerations
from dax_core.attention import BackendUnavailable, BoundAttention
from dax_core.attention.config import AttentionConfig, with_env_attention
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanModel
from dax_core.recipe import Recipe, RecipeError
from tests.environment import installed
from tests.unit.node_modules import node_module as load_node_module

SPEC = WanSpec(dim=32, num_layers=2, num_heads=2, ffn_dim=64, text_dim=16)


def test_config_module_is_registered_so_recipes_rebuild_from_plain_json():
    assert "dax_core.attention.config" in CONFIG_MODULES
    recipe = Recipe("wan.safetensors").with_acceleration(
        AttentionConfig(
            "sage", cross_backend="sdpa", sage_qk_quant="per_warp", sage_pv_accum="fp32+fp32", sage_inputs="fused"
        )
    )
    data = json.loads(json.dumps(recipe.to_dict()))
    assert data["accelerations"] == [
        {
            "kind": "attention",
            "backend": "sage",
            "cross_backend": "sdpa",
            "sage_qk_quant": "per_warp",
            "sage_pv_accum": "fp32+fp32",
            "sage_inputs": "fused",
        }
    ]
    assert Recipe.from_dict(data) == recipe
    assert recipe.fingerprint() != Recipe("wan.safetensors").with_acceleration(AttentionConfig("sage")).fingerprint()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backend": "xformers"}, r"unknown attention backend 'xformers'; choose one of sdpa, sdpa_cudnn"),
        ({"cross_backend": "fast"}, r"unknown cross-attention backend 'fast'; choose same or one of sdpa"),
        ({"sage_qk_quant": "per_block"}, r"Q/K granularity 'per_block' is not one of auto, per_thread, per_warp"),
        ({"sage_inputs": "triton"}, r"SageAttention inputs 'triton' is not one of sage, fused, auto"),
        ({"sage_pv_accum": "fp8"}, r"P·V accumulation 'fp8' is not one of auto, fp32\+fp32"),
    ],
)
def test_invalid_config_says_what_to_change(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        AttentionConfig(**kwargs)


@pytest.mark.parametrize(
    ("environ", "backend"),
    [
        ({}, "sdpa"),
        ({"ATTENTION_BACKEND": ""}, "sdpa"),
        ({"ATTENTION_BACKEND": "FLASH_ATTN"}, "flash"),
        ({"ATTENTION_BACKEND": "SAGE_ATTN"}, "sage"),
        ({"ATTENTION_BACKEND": "sdpa_cudnn"}, "sdpa_cudnn"),
    ],
)
def test_attention_backend_environment_variable(environ, backend):
    assert AttentionConfig.from_env(environ) == AttentionConfig(backend=backend)


def test_unknown_environment_value_is_an_error_naming_the_accepted_ones():
    with pytest.raises(RecipeError, match=r"ATTENTION_BACKEND='XFORMERS' .* use one of FLASH_ATTN, SAGE_ATTN, SDPA"):
        AttentionConfig.from_env({"ATTENTION_BACKEND": "XFORMERS"})


def test_environment_default_fills_only_a_recipe_without_attention():
    bare = Recipe("wan.safetensors")
    assert with_env_attention(bare, {"ATTENTION_BACKEND": "SAGE_ATTN"}).acceleration("attention") == AttentionConfig(
        "sage"
    )
    chosen = bare.with_acceleration(AttentionConfig("sdpa_flash"))
    assert with_env_attention(chosen, {"ATTENTION_BACKEND": "SAGE_ATTN"}) is chosen


def _model() -> WanModel:
    model = WanModel(SPEC, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _forward(model: WanModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 1, 4, 4, generator=g)
    ctx = torch.randn(1, 7, SPEC.text_dim, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), ctx)


def test_apply_sets_bound_kernels_on_that_model_only():
    model, other = _model(), _model()
    default_out = _forward(model)
    recipe = Recipe("wan.safetensors", compute_dtype="fp32").with_acceleration(
        AttentionConfig("auto", cross_backend="sdpa")
    )
    apply_accelerations(model, recipe, BuildEnv(torch.device("cpu")))
    assert isinstance(model.self_attn_fn, BoundAttention) and model.self_attn_fn.backend == "sdpa"
    assert "chosen by auto" in model.self_attn_fn.kernel and "chosen by auto" not in model.cross_attn_fn.kernel
    assert other.self_attn_fn is not model.self_attn_fn
    torch.testing.assert_close(_forward(model), default_out, rtol=0, atol=0)  # same kernel on the CPU


def test_apply_uses_different_cross_attention_kernel():
    calls = []

    def spy(name):
        def run(q, k, v, scale):
            calls.append((name, q.shape[1], k.shape[1]))
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            ).transpose(1, 2)

        return BoundAttention(name, name, run=run)

    model = _model()
    model.set_attention(spy("self"), spy("cross"))
    _forward(model)
    # 4x4 latent -> 2x2 = 4 tokens; 7 text tokens; one call of each per block
    assert calls == [("self", 4, 4), ("cross", 4, 7)] * SPEC.num_layers


@pytest.mark.skipif(installed("sageattention"), reason="sageattention is installed here")
def test_apply_with_a_missing_backend_fails_before_sampling():
    recipe = Recipe("wan.safetensors").with_acceleration(AttentionConfig("sdpa", cross_backend="sage"))
    with pytest.raises(BackendUnavailable, match=r"sageattention is not installed.*pip install sageattention==1\.0\.6"):
        apply_accelerations(_model(), recipe, BuildEnv(torch.device("cpu")))


# --- the node ------------------------------------------------------------------------------------------------------


@pytest.fixture
def node_module(comfyui_importable):
    return load_node_module("attention")


def test_node_lists_the_backends_and_returns_a_new_recipe_with_the_config(node_module):
    node = node_module.DaxSetAttentionBackend()
    inputs = node_module.DaxSetAttentionBackend.INPUT_TYPES()["required"]
    assert inputs["backend"][0] == ["sdpa", "sdpa_cudnn", "sdpa_flash", "flash", "sage", "auto"]
    assert inputs["cross_attention"][0][0] == "same"
    recipe = Recipe("wan.safetensors", compute_dtype="fp32")
    result = node.apply(recipe, "sdpa", "same", "auto", "auto")
    (new,) = result["result"]
    assert new is not recipe and recipe.accelerations == ()
    assert new.acceleration("attention") == AttentionConfig("sdpa")
    assert result["ui"]["dax_summary"][0].startswith("attention (sdpa): PyTorch SDPA")


@pytest.mark.skipif(installed("sageattention"), reason="sageattention is installed here")
def test_node_fails_at_execution_when_the_backend_is_not_installed(node_module):
    with pytest.raises(BackendUnavailable, match="sageattention is not installed: build SageAttention2"):
        node_module.DaxSetAttentionBackend().apply(Recipe("wan.safetensors"), "sage", "same", "auto", "auto")
