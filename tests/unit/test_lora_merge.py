"""Merging LoRAs with the other levers: before quantization (bit for bit what quantizing pre-merged weights gives),
into float8 weights (dequantized, merged, quantized again with a scale of its own), and again on a built engine
(equal, bit for bit, to a fresh build with the new LoRAs, with no recompilation)."""

from __future__ import annotations

import pytest
import torch

from dax_core.compile import CompileConfig
from dax_core.compile.regional import compile_blocks
from dax_core.lora import merge as lora_merge
from dax_core.lora.tiny import in_format, random_lora
from dax_core.models.tiny import write_state_dict
from dax_core.models.wan import WanLinear
from dax_core.models.weight_conversion import FP8_E4M3_MAX
from dax_core.quant.config import QuantizeConfig
from dax_core.runtime.engine import SampleRequest, WanEngine
from tests.unit.lora_helpers import SPEC, lora_file, with_loras, write_base, write_lora
from tests.unit.test_compile import CountingBackend

# bf16 compute: the dtype quantization and Wan run in; every comparison below is exact or bounded by fp8's own step
COMPUTE = "bf16"


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the model computes with: parameters, buffers (quantized weights and scales) and the per-tensor
    scales of float8 WanLinear weights."""
    out = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for name, m in model.named_modules():
        if isinstance(m, WanLinear) and m.weight_scale is not None:
            out[f"{name}.weight_scale"] = m.weight_scale
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t


def assert_same_model(got: torch.nn.Module, expected: torch.nn.Module) -> None:
    a, b = _tensors(got), _tensors(expected)
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(_bits(a[name]), _bits(b[name])), name


def _request(steps: int = 3) -> SampleRequest:
    g = torch.Generator().manual_seed(2)
    return SampleRequest(
        positive=torch.randn(1, 5, SPEC.text_dim, generator=g),
        negative=torch.randn(1, 5, SPEC.text_dim, generator=g),
        latent=torch.zeros(1, 16, 2, 4, 4),
        seed=7,
        steps=steps,
        cfg=4.0,
        sampler="euler",
    )


@pytest.mark.parametrize("dtype", ["fp8", "int8"])
def test_lora_then_quantization_equals_quantizing_the_pre_merged_weights_bit_for_bit(tmp_path, dtype):
    _, base = write_base(tmp_path, dtype="bf16")
    _, lora = lora_file(tmp_path, rank=4, alpha=2.0)
    quantize = QuantizeConfig(dtype=dtype)
    merged = WanEngine.build(with_loras(base, (lora, 0.9), compute_dtype=COMPUTE), "cpu").model
    premerged = write_state_dict(merged.state_dict(), tmp_path / "premerged.safetensors", num_heads=SPEC.num_heads)
    plain = with_loras(premerged, compute_dtype=COMPUTE).with_acceleration(quantize)
    expected = WanEngine.build(plain, "cpu")
    got = WanEngine.build(with_loras(base, (lora, 0.9), compute_dtype=COMPUTE).with_acceleration(quantize), "cpu")
    assert_same_model(got.model, expected.model)
    assert torch.equal(got.sample(_request()).latent, expected.sample(_request()).latent)


@pytest.mark.parametrize(("stored", "weight_dtype"), [("fp8_scaled", "default"), ("bf16", "fp8_e4m3fn")])
def test_float8_weights_are_merged_in_float32_and_quantized_again_with_a_scale_of_their_own(
    tmp_path, stored, weight_dtype
):
    _, base = write_base(tmp_path, dtype=stored)
    # changes as large as the weights themselves: with the stored scale kept, the merged weights would clip
    components = random_lora(SPEC, rank=4, seed=1)
    big = {k: v * 10 if k.endswith(".lora_up.weight") else v for k, v in components.items()}
    lora = write_lora(tmp_path / "big.safetensors", in_format(big, "lightx2v"))
    model = WanEngine.build(with_loras(base, (lora, 1.0), weight_dtype=weight_dtype, compute_dtype=COMPUTE), "cpu")
    as_stored = WanEngine.build(with_loras(base, compute_dtype=COMPUTE), "cpu").model  # "default": as the file has it
    stored_linears = {name: m for name, m in as_stored.named_modules() if isinstance(m, WanLinear)}
    checked = 0
    for name, m in model.model.named_modules():
        if not isinstance(m, WanLinear) or m.weight.dtype != torch.float8_e4m3fn:
            continue
        before = stored_linears[name]
        start = before.weight.double()  # the weight as stored (times its scale), merged in float64
        if before.weight_scale is not None:
            start = start * before.weight_scale.double()
        up, down = big[f"{name}.lora_up.weight"].double(), big[f"{name}.lora_down.weight"].double()
        target = start + up @ down
        amax = target.abs().max()
        assert m.weight_scale.item() == pytest.approx(amax.item() / FP8_E4M3_MAX, rel=1e-6), name
        if before.weight_scale is not None:
            assert amax > before.weight_scale.double() * FP8_E4M3_MAX, f"{name}: the change must leave the range"
        # e4m3 keeps 3 mantissa bits: rounding moves a value by at most 2^-4 of itself, or by half the smallest
        # subnormal step (2^-10 of the scale) near zero; float32 merging adds ~1e-7 of the largest value
        got = m.weight.double() * m.weight_scale.double()
        bound = target.abs() * 2**-4 + m.weight_scale.double() * 2**-10 + 1e-6 * amax
        assert bool(((got - target).abs() <= bound).all()), name
        checked += 1
    assert checked == 10 * SPEC.num_layers  # q, k, v, o of both attentions and the two FFN layers of every block


@pytest.mark.parametrize(
    ("weight_dtype", "quantize"),
    [("default", None), ("fp8_e4m3fn", None), ("default", QuantizeConfig("fp8")), ("default", QuantizeConfig("int8"))],
    ids=["bf16", "fp8-storage", "fp8-linears", "int8-linears"],
)
def test_a_built_engine_takes_new_loras_exactly_as_a_fresh_build(tmp_path, weight_dtype, quantize):
    _, base = write_base(tmp_path, dtype="bf16")
    _, one = lora_file(tmp_path, seed=1, rank=4, alpha=2.0)
    _, two = lora_file(tmp_path, "kohya", seed=2, rank=2)

    def recipe(*loras):
        r = with_loras(base, *loras, weight_dtype=weight_dtype, compute_dtype=COMPUTE)
        return r if quantize is None else r.with_acceleration(quantize)

    engine = WanEngine.build(recipe((one, 1.0)), "cpu")
    for loras in ([(one, 0.25)], [(one, -0.5), (two, 1.5)], [(two, 1.0)], []):
        target = recipe(*loras)
        engine.use_loras_of(target)
        assert engine.recipe == target
        assert_same_model(engine.model, WanEngine.build(target, "cpu").model)
    assert engine.sample(_request()).notes == ()  # no LoRA left: nothing to report


def test_new_strength_on_a_compiled_engine_compiles_nothing_again(tmp_path, fresh_dynamo):
    _, base = write_base(tmp_path, dtype="bf16")
    _, lora = lora_file(tmp_path, rank=4)
    engine = WanEngine.build(with_loras(base, (lora, 1.0), compute_dtype=COMPUTE), "cpu")
    counter = CountingBackend()
    compile_blocks(engine.model, CompileConfig(), backend=counter)
    engine.sample(_request())
    new = with_loras(base, (lora, 0.3), compute_dtype=COMPUTE)
    engine.use_loras_of(new)
    got = engine.sample(_request())
    assert counter.graphs == 1
    expected = WanEngine.build(new, "cpu").sample(_request())
    torch.testing.assert_close(got.latent, expected.latent, rtol=0, atol=0)
    assert got.notes == ("LoRA lora-lightx2v-1.safetensors at strength 0.3: 69 parameters changed",)


def test_use_loras_of_takes_loras_only_and_a_failure_half_way_leaves_the_engine_unusable(tmp_path, monkeypatch):
    _, base = write_base(tmp_path, dtype="bf16")
    _, lora = lora_file(tmp_path, rank=4)
    built = with_loras(base, (lora, 1.0), compute_dtype=COMPUTE)
    engine = WanEngine.build(built, "cpu")
    with pytest.raises(ValueError, match="differs from the engine's in its LoRAs and step caches"):
        engine.use_loras_of(with_loras(base, (lora, 0.5), compute_dtype="fp32"))
    assert not engine.can_use_loras_of(built.with_acceleration(QuantizeConfig("fp8")))
    assert engine.can_use_loras_of(with_loras(base, compute_dtype=COMPUTE))

    written = []

    def failing_write(model, name, value, scale):
        if len(written) == 3:
            raise OSError("the disk went away")
        written.append(name)

    monkeypatch.setattr(lora_merge, "_write", failing_write)
    with pytest.raises(OSError, match="the disk went away"):
        engine.use_loras_of(with_loras(base, (lora, 0.5), compute_dtype=COMPUTE))
    assert not engine.usable and not engine.can_use_loras_of(built)
    with pytest.raises(RuntimeError, match="unusable: taking new LoRAs failed half-way"):
        engine.sample(_request())


def test_a_changed_lora_file_is_refused_before_any_weight_is_read(tmp_path):
    _, base = write_base(tmp_path, dtype="bf16")
    components, lora = lora_file(tmp_path, rank=4)
    recipe = with_loras(base, (lora, 1.0), compute_dtype=COMPUTE)
    write_lora(lora, in_format({k: v * 2 for k, v in components.items()}, "lightx2v"))  # retrained, same shapes
    with pytest.raises(ValueError, match="changed since the Load LoRA node read it"):
        WanEngine.build(recipe, "cpu")


def test_loras_and_step_caches_change_on_one_built_engine(tmp_path):
    from dax_core.cache.config import TeacacheConfig
    from dax_core.rules import STEP_CACHE_KINDS

    _, base = write_base(tmp_path, dtype="bf16")
    _, lora = lora_file(tmp_path, rank=4)
    engine = WanEngine.build(with_loras(base, (lora, 1.0), compute_dtype=COMPUTE), "cpu")
    for strength, threshold in ((0.5, 0.1), (0.5, 0.3), (2.0, 0.3)):  # the sampler node's order of calls
        teacache = TeacacheConfig(threshold, model="wan2.1-t2v-1.3b")
        recipe = with_loras(base, (lora, strength), compute_dtype=COMPUTE).with_acceleration(teacache)
        assert engine.can_use_loras_of(recipe)
        engine.use_loras_of(recipe)
        engine.use_step_caches_of(recipe)
        assert engine.recipe == recipe and engine.model.step_cache.policy.threshold == threshold
    assert_same_model(engine.model, WanEngine.build(recipe.without(STEP_CACHE_KINDS), "cpu").model)
