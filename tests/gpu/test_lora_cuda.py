"""LoRA merging on the GPU: the merged weights against float64 math, and a built engine (FP8 linears through
``torch._scaled_mm``, compiled) taking a new strength exactly as a fresh build, with no recompilation."""

from __future__ import annotations

from torch._dynamo.utils import counters

from dax_core.compile import CompileConfig
from dax_core.quant.config import QuantizeConfig
from dax_core.quant.qconfig import require_fp8_support
from dax_core.runtime.engine import WanEngine
from tests.numerics import rel_error
from tests.unit.lora_helpers import lora_file, merged_f64, with_loras, write_base
from tests.unit.test_lora_merge import _request, assert_same_model


def test_merged_weights_on_cuda_follow_float64(tmp_path):
    state, base = write_base(tmp_path)
    components, lora = lora_file(tmp_path, rank=4, alpha=2.0)
    merged = WanEngine.build(with_loras(base, (lora, 0.8), compute_dtype="fp32"), "cuda").model.state_dict()
    expected = merged_f64(state, [(components, 0.8)])
    for name, value in merged.items():
        # float32 matmuls (PyTorch leaves TF32 off for them): float32 rounding, ~1e-7; a missed key moves it ~6e-2
        assert rel_error(value.cpu(), expected[name]) <= 1e-6, name


def test_a_compiled_fp8_engine_takes_a_new_strength_exactly_as_a_fresh_build(tmp_path):
    require_fp8_support("cuda")
    _, base = write_base(tmp_path, dtype="bf16")
    _, lora = lora_file(tmp_path, rank=4)

    def recipe(strength: float):
        r = with_loras(base, (lora, strength)).with_acceleration(QuantizeConfig("fp8"))
        return r.with_acceleration(CompileConfig(backend="inductor"))

    engine = WanEngine.build(recipe(1.0), "cuda")
    engine.sample(_request())
    graphs = counters["stats"]["unique_graphs"]
    engine.use_loras_of(recipe(0.4))
    warm = engine.sample(_request())
    assert counters["stats"]["unique_graphs"] == graphs  # the new weights are inputs of the same graph
    fresh = WanEngine.build(recipe(0.4), "cuda")
    assert_same_model(engine.model, fresh.model)  # bit for bit, the FP8 weights and their scales included
    # the same weights through the same compiled graph; a run that kept the old strength differs by ~1e-2
    assert rel_error(warm.latent, fresh.sample(_request()).latent) <= 1e-6
