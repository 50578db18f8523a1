"""A whole tiny Wan quantized through the recipe: what stays in high precision, output error, serialization."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from dax_core.accelerations import CONFIG_MODULES, BuildEnv, apply_accelerations
from dax_core.models.loading import load_wan_model
from dax_core.models.spec import WanSpec
from dax_core.models.tiny import write_tiny_model
from dax_core.models.wan import WanLinear, WanModel
from dax_core.quant import QuantizationError, QuantLinear, linear_weight_bytes, require_fp8_support
from dax_core.quant.config import QuantizeConfig, parse_keep_list
from dax_core.recipe import Recipe, RecipeError
from dax_core.runtime.engine import SampleRequest, WanEngine
from tests.environment import REPO
from tests.numerics import rel_error
from tests.unit.tiny_wan import fill_checkpoint_like_

SPEC = WanSpec(dim=128, num_layers=3, num_heads=4, ffn_dim=256, text_dim=64, freq_dim=32)
CPU = BuildEnv(torch.device("cpu"))
SCHEMES = [("fp8", "per-token-per-channel"), ("fp8", "per-tensor"), ("int8", "per-token-per-channel"),
           ("int8", "per-tensor")]  # fmt: skip
HIGH_PRECISION = ["head.head", "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
                  "time_projection.1"]  # fmt: skip


def _model(dtype: torch.dtype) -> WanModel:
    """Seeded like the benchmarks: 0.5/sqrt(fan_in) weights, 0.1 modulation, norm weights near 1."""
    return fill_checkpoint_like_(WanModel(SPEC, dtype=dtype))


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 16, 3, 16, 16, generator=g), torch.tensor([700.0]), torch.randn(1, 24, 64, generator=g)


@pytest.mark.parametrize(("dtype", "granularity"), SCHEMES)
def test_the_default_recipe_keeps_embedders_and_head_in_high_precision(dtype, granularity):
    model = _model(torch.bfloat16)
    QuantizeConfig(dtype=dtype, granularity=granularity).apply(model, CPU)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear))}
    kept = sorted(n for n, m in linears.items() if isinstance(m, WanLinear))
    assert kept == HIGH_PRECISION
    assert isinstance(model.patch_embedding, nn.Conv3d) and model.patch_embedding.weight.dtype == torch.float32
    quantized = [m for m in linears.values() if isinstance(m, QuantLinear)]
    assert len(quantized) == SPEC.num_layers * 10
    assert {m.qweight.dtype for m in quantized} == {torch.float8_e4m3fn if dtype == "fp8" else torch.int8}
    assert {m.bias.dtype for m in quantized} == {torch.bfloat16}


# Error of the block stack's output, relative to what the blocks add to the residual stream, in float32 compute
# (so only quantization contributes). One fp8 layer: ~0.037 (test_quant_numerics); 3 blocks of 10 layers compound
# it a little: measured fp8 0.043-0.045, int8 per token 0.012, per tensor 0.017.
FLOAT32_BOUNDS = {"fp8": 0.065, "int8-per-token-per-channel": 0.02, "int8-per-tensor": 0.025}


@pytest.mark.parametrize(("dtype", "granularity"), SCHEMES)
def test_quantized_blocks_track_the_float32_model(dtype, granularity):
    x, t, ctx = _inputs()
    model = _model(torch.float32)
    quantized = copy.deepcopy(model)
    QuantizeConfig(dtype=dtype, granularity=granularity).apply(quantized, CPU)
    with torch.no_grad():
        p = model.prepare(x, t, ctx)
        ref = model.run_blocks(p).double()
        got = quantized.run_blocks(quantized.prepare(x, t, ctx)).double()
    contribution = (ref - p.tokens.double()).norm()
    rel = ((got - ref).norm() / contribution).item()
    assert rel < FLOAT32_BOUNDS.get(dtype, FLOAT32_BOUNDS.get(f"{dtype}-{granularity}")), rel
    assert rel > 1e-3  # the blocks did run quantized


@pytest.mark.parametrize(("dtype", "granularity"), SCHEMES)
def test_quantized_bf16_model_output_stays_within_bound_of_bf16(dtype, granularity):
    """Whole forward in bf16: bf16's own error against float64 is ~5e-3 on this model; quantization adds
    ~4e-3 (fp8) or ~3e-3 (int8) to the output, because the residual stream carries most of it unchanged."""
    x, t, ctx = _inputs()
    model = _model(torch.bfloat16)
    quantized = copy.deepcopy(model)
    QuantizeConfig(dtype=dtype, granularity=granularity).apply(quantized, CPU)
    with torch.no_grad():
        ref = model(x, t, ctx).double()
        got = quantized(x, t, ctx).double()
    rel = rel_error(got, ref)
    cos = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0).item()
    assert 1e-3 < rel < 8e-3 and cos > 0.9999, (rel, cos)  # quantized (moved), but not far


def test_fp8_checkpoint_model_is_quantized_without_copying_its_weights():
    """The loader keeps fp8 files as float8 weights plus ComfyUI's per-tensor scale; the quantizer takes them."""
    model = _model(torch.bfloat16)
    stored = {}
    for name, m in model.named_modules():
        if isinstance(m, WanLinear) and name.startswith("blocks."):
            m.weight_scale = m.weight.detach().float().abs().amax() / 448
            m.weight = nn.Parameter((m.weight.detach().float() / m.weight_scale).to(torch.float8_e4m3fn), False)
            stored[name] = m.weight.data_ptr()
    x, t, ctx = _inputs()
    with torch.no_grad():
        ref = model(x, t, ctx).double()  # WanLinear upcasts the fp8 weights at every call
    QuantizeConfig(dtype="fp8", granularity="per-tensor").apply(model, CPU)
    for name, ptr in stored.items():
        assert model.get_submodule(name).qweight.data_ptr() == ptr, name
    with torch.no_grad():
        got = model(x, t, ctx).double()
    rel = rel_error(got, ref)
    assert 1e-3 < rel < 8e-3, rel  # only the activations are newly quantized: they move the output, a little


def test_block_linear_memory_halves():
    model = _model(torch.bfloat16)
    blocks_before = linear_weight_bytes(model.blocks)
    QuantizeConfig(dtype="fp8").apply(model, CPU)
    # 1 byte per weight instead of 2, plus bf16 biases and float32 per-channel scales
    weights = sum(m.qweight.numel() for m in model.blocks.modules() if isinstance(m, QuantLinear))
    extras = sum(m.bias.numel() * 2 + m.weight_scale.numel() * 4 for m in model.blocks.modules()
                 if isinstance(m, QuantLinear))  # fmt: skip
    assert linear_weight_bytes(model.blocks) == weights + extras
    assert linear_weight_bytes(model.blocks) < 0.52 * blocks_before


def test_recipe_carries_the_config_through_plain_json_and_applies_it():
    config = QuantizeConfig(dtype="int8", granularity="per-tensor", keep=("condition_embedder", "proj_out", "blocks.0"))
    recipe = Recipe("wan.safetensors").with_acceleration(config)
    again = Recipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert again == recipe and again.fingerprint() == recipe.fingerprint()
    assert Recipe("wan.safetensors").with_acceleration(QuantizeConfig()).fingerprint() != recipe.fingerprint()
    model = _model(torch.bfloat16)
    apply_accelerations(model, again, CPU)
    assert isinstance(model.blocks[0].ffn[0], WanLinear)  # kept by 'blocks.0'
    assert (
        isinstance(model.blocks[1].ffn[0], QuantLinear) and model.blocks[1].ffn[0].qconfig.granularity == "per-tensor"
    )
    assert isinstance(model.head.head, WanLinear)  # kept by the diffusers name 'proj_out'


def test_a_recipe_dict_rebuilds_in_a_fresh_process():
    assert "dax_core.quant.config" in CONFIG_MODULES
    data = Recipe("wan.safetensors").with_acceleration(QuantizeConfig(dtype="int8")).to_dict()
    code = (
        "import json, sys\nimport dax_core.accelerations\nfrom dax_core.recipe import Recipe\n"
        "r = Recipe.from_dict(json.loads(sys.argv[1]))\n"
        "print(type(r.accelerations[0]).__name__, r.accelerations[0].dtype)"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(data)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["QuantizeConfig", "int8"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "fp4"}, "quantize dtype 'fp4' is not one of fp8, int8"),
        ({"granularity": "per-block"}, "granularity 'per-block' is not one of per-tensor, per-token-per-channel"),
        ({"backend": "cutlass"}, "backend 'cutlass' is not one of auto, torch, torchao"),
        ({"keep": ("head", "text embedding")}, "keep-list entry 'text embedding' is not a module name"),
    ],
)
def test_invalid_configs_say_what_to_change(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        QuantizeConfig(**kwargs)


def test_keep_list_checks_against_the_checkpoint_shape():
    QuantizeConfig(keep=("condition_embedder", "proj_out", "blocks.2.ffn")).check(SPEC)
    with pytest.raises(
        QuantizationError, match=r"keep list: 'blocks.3' names no module .*closest: blocks.2, blocks.1, blocks.0"
    ):
        QuantizeConfig(keep=(*QuantizeConfig().keep, "blocks.3")).check(SPEC)
    with pytest.raises(QuantizationError, match=r"time_embedding\.0, time_embedding\.2, time_projection\.1 would be"):
        QuantizeConfig(keep=("text_embedding", "head")).check(SPEC)


def test_per_tensor_scales_are_refused_when_the_tokens_are_split():
    split = BuildEnv(torch.device("cpu"), world_size=2)  # what a worker group's rank is built with
    with pytest.raises(QuantizationError) as refused:
        QuantizeConfig(dtype="int8", granularity="per-tensor").apply(_model(torch.float32), split)
    assert "Quantize Linear (int8, per-tensor) on 2 GPUs" in str(refused.value)
    assert "use granularity 'per-token-per-channel'" in str(refused.value)
    model = _model(torch.float32)
    QuantizeConfig(dtype="int8").apply(model, split)  # per token: each rank computes its tokens' rows exactly
    assert all(m.token_local for m in model.modules() if isinstance(m, QuantLinear))


def test_parse_keep_list():
    assert parse_keep_list(" text_embedding, head ,,blocks.0.ffn ") == ("text_embedding", "head", "blocks.0.ffn")
    assert parse_keep_list("") == ()


def test_fp8_on_a_gpu_older_than_ada_names_the_gpu_and_suggests_int8(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 3090")
    with pytest.raises(QuantizationError, match=r"8\.9 or newer.*NVIDIA GeForce RTX 3090 is 8\.6\. Choose int8"):
        require_fp8_support(torch.device("cuda", 0))
    with pytest.raises(QuantizationError, match="RTX 3090"):
        QuantizeConfig(dtype="fp8").apply(_model(torch.bfloat16), BuildEnv(torch.device("cuda", 0)))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    require_fp8_support(torch.device("cuda", 0))
    require_fp8_support(torch.device("cpu"))  # the CPU runs the reference path


@pytest.mark.parametrize("granularity", ["per-tensor", "per-token-per-channel"])
def test_a_scaled_fp8_file_goes_from_the_loader_into_the_fp8_layers_without_a_copy(tmp_path, granularity):
    path = write_tiny_model(tmp_path / "wan_fp8_scaled.safetensors", dtype="fp8_scaled", seed=3)
    model = load_wan_model(path, device="cpu", compute_dtype=torch.bfloat16)  # weight_dtype "default" keeps fp8
    stored = {n: (m.weight.data_ptr(), m.weight_scale) for n, m in model.named_modules()
              if isinstance(m, WanLinear) and n.startswith("blocks.")}  # fmt: skip
    assert stored and all(scale is not None for _, scale in stored.values())
    QuantizeConfig(dtype="fp8", granularity=granularity).apply(model, CPU)
    for name, (ptr, scale) in stored.items():
        layer = model.get_submodule(name)
        assert layer.qweight.data_ptr() == ptr, name  # the loaded float8 bytes themselves
        assert torch.equal(layer.weight_scale, scale.float().expand_as(layer.weight_scale)), name


def test_the_engine_builds_and_samples_with_quantized_linears(tmp_path):
    path = write_tiny_model(tmp_path / "wan_bf16.safetensors", dtype="bf16", seed=4)
    recipe = Recipe(str(path)).with_acceleration(QuantizeConfig(dtype="int8"))
    engine = WanEngine.build(recipe, "cpu")
    assert isinstance(engine.model.blocks[1].self_attn.o, QuantLinear)
    g = torch.Generator().manual_seed(5)
    text = torch.randn(1, 7, 768, generator=g)
    request = SampleRequest(positive=text, negative=-text, latent=torch.zeros(1, 16, 1, 8, 8), seed=1, steps=2,
                            cfg=5.0, sampler="euler")  # fmt: skip
    result = engine.sample(request)
    assert result.latent.shape == (1, 16, 1, 8, 8) and torch.isfinite(result.latent).all()
