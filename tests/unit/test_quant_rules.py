"""qconfig_dict rules: default, inheritance, None, regex keys, Wan and diffusers names, and the errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dax_core.models.spec import WAN21_T2V_14B, WanSpec
from dax_core.models.wan import WanModel
from dax_core.quant import (
    QuantizationError,
    QuantLinear,
    get_dynamic_fp8_per_token_act_per_channel_weight_qconfig,
    get_dynamic_int8_per_tensor_act_per_tensor_weight_qconfig,
    get_dynamic_int8_per_token_act_per_channel_weight_qconfig,
    plan_quantization,
    quantize_dynamic,
)

FP8 = get_dynamic_fp8_per_token_act_per_channel_weight_qconfig()
INT8 = get_dynamic_int8_per_token_act_per_channel_weight_qconfig()
INT8_PT = get_dynamic_int8_per_tensor_act_per_tensor_weight_qconfig()


class Toy(nn.Module):
    """encoder.layers.{0,1}.{fc1,fc2}, encoder.proj, head (Linear), embed (Conv1d)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv1d(16, 32, 1)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            nn.ModuleDict({"fc1": nn.Linear(32, 64), "fc2": nn.Linear(64, 32)}) for _ in range(2)
        )
        self.encoder.proj = nn.Linear(32, 32)
        self.head = nn.Linear(32, 16)


LINEARS = ["encoder.layers.0.fc1", "encoder.layers.0.fc2", "encoder.layers.1.fc1", "encoder.layers.1.fc2",
           "encoder.proj", "head"]  # fmt: skip


def test_the_empty_key_is_the_default_for_every_linear():
    assert plan_quantization(Toy(), {"": FP8}) == dict.fromkeys(LINEARS, FP8)


def test_no_default_quantizes_only_the_named_subtrees():
    plan = plan_quantization(Toy(), {"encoder.layers.1": INT8})
    assert plan == {**dict.fromkeys(LINEARS), "encoder.layers.1.fc1": INT8, "encoder.layers.1.fc2": INT8}


def test_none_keeps_a_subtree_and_a_deeper_key_overrides_it():
    plan = plan_quantization(Toy(), {"": FP8, "encoder": None, "encoder.layers.0.fc2": INT8, "head": None})
    assert plan == {**dict.fromkeys(LINEARS), "encoder.layers.0.fc2": INT8}


def test_a_module_without_a_key_inherits_its_parents_value():
    plan = plan_quantization(Toy(), {"": FP8, "encoder.layers": INT8, "encoder.layers.0": INT8_PT})
    assert plan["encoder.layers.0.fc1"] == INT8_PT and plan["encoder.layers.0.fc2"] == INT8_PT
    assert plan["encoder.layers.1.fc1"] == INT8 and plan["encoder.proj"] == FP8 and plan["head"] == FP8


def test_regex_keys_match_full_names_and_their_subtrees_inherit():
    plan = plan_quantization(Toy(), {"": FP8, r"re:encoder\.layers\.\d+\.fc2": None, r"re:encoder\.layers\.1": INT8})
    assert plan["encoder.layers.0.fc2"] is None and plan["encoder.layers.1.fc2"] is None
    assert plan["encoder.layers.1.fc1"] == INT8  # inherited from the module the pattern matched
    assert plan["encoder.layers.0.fc1"] == FP8  # 'encoder.layers.1' must match fully: not a substring search


def test_a_name_wins_over_a_pattern_and_the_first_pattern_wins():
    plan = plan_quantization(Toy(), {"re:.*fc1": INT8, "re:encoder.*": None, "encoder.layers.0.fc1": INT8_PT})
    assert plan["encoder.layers.0.fc1"] == INT8_PT
    assert plan["encoder.layers.1.fc1"] == INT8
    assert plan["encoder.proj"] is None


@pytest.mark.parametrize(
    ("qconfig_dict", "message"),
    [
        ({"": FP8, "encoder.layer": None}, r"'encoder.layer' names no module .*closest: encoder.layers"),
        ({"": FP8, "re:decoder.*": None}, "matches no module name"),
        ({"": FP8, "re:enc(oder": None}, "not a valid regular expression"),
        ({"": "fp8"}, "must be a QConfig or None, got str"),
        ({"embed": FP8}, r"'embed' holds no linear layer \(Conv1d\)"),
        ([("", FP8)], "must be a dict"),
    ],
)
def test_bad_keys_and_values_say_what_to_change(qconfig_dict, message):
    with pytest.raises(QuantizationError, match=message):
        plan_quantization(Toy(), qconfig_dict)


def test_quantize_dynamic_swaps_exactly_the_planned_layers_and_refuses_a_second_pass():
    model = Toy()
    before = {name: m for name, m in model.named_modules()}
    assert quantize_dynamic(model, {"": INT8, "head": None}, backend="torch") is model
    for name in LINEARS[:-1]:
        assert isinstance(model.get_submodule(name), QuantLinear)
    assert model.get_submodule("head") is before["head"] and model.embed is before["embed"]
    with pytest.raises(QuantizationError, match="already quantized"):
        quantize_dynamic(model, {"": INT8})


def test_an_error_leaves_the_model_untouched():
    model = Toy()
    model.encoder.proj = nn.Linear(32, 40)  # 40 is no multiple of 16
    with pytest.raises(QuantizationError, match=r"encoder\.proj: out_features 40"):
        quantize_dynamic(model, {"": INT8})
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


def test_unknown_backend_is_refused():
    with pytest.raises(QuantizationError, match="backend 'cutlass' is not one of auto, torch, torchao"):
        quantize_dynamic(Toy(), {"": INT8}, backend="cutlass")


# -- Wan names ---------------------------------------------------------------------------------------------

SPEC = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=64, freq_dim=32)
KEEP_WAN = {"text_embedding": None, "time_embedding": None, "time_projection": None, "head": None}


def _meta_wan(spec: WanSpec = SPEC) -> WanModel:
    return WanModel(spec, device="meta")


def test_diffusers_names_select_the_same_wan_layers():
    model = _meta_wan()
    wan = plan_quantization(model, {"": FP8, **KEEP_WAN, "blocks.1.self_attn": INT8, "blocks.0.ffn.2": None})
    diffusers = plan_quantization(
        model,
        {"": FP8, "condition_embedder": None, "proj_out": None, "blocks.1.attn1": INT8, "blocks.0.ffn.net.2": None},
    )
    assert diffusers == wan
    assert wan["blocks.1.self_attn.q"] == INT8 and wan["blocks.0.ffn.2"] is None and wan["head.head"] is None
    assert wan["blocks.0.cross_attn.k"] == FP8


def test_a_wan_name_wins_over_a_diffusers_alias_of_the_same_layer():
    plan = plan_quantization(_meta_wan(), {"": FP8, "condition_embedder": None, "head": None,
                                           "text_embedding.2": INT8})  # fmt: skip
    assert plan["text_embedding.2"] == INT8 and plan["text_embedding.0"] is None


def test_the_float32_time_layers_cannot_be_quantized():
    with pytest.raises(QuantizationError, match=r"time_embedding\.0, time_embedding\.2, time_projection\.1 .*float32"):
        plan_quantization(_meta_wan(), {"": FP8, "text_embedding": None})


def test_a_misspelt_wan_key_lists_close_wan_and_diffusers_names():
    with pytest.raises(QuantizationError, match=r"'condition_embeder'.*closest: condition_embedder"):
        plan_quantization(_meta_wan(WAN21_T2V_14B), {"": FP8, "condition_embeder": None})
    with pytest.raises(QuantizationError, match=r"'blocks.39.self_atn'.*closest: blocks.39.self_attn"):
        plan_quantization(_meta_wan(WAN21_T2V_14B), {"": FP8, **KEEP_WAN, "blocks.39.self_atn": None})


def test_14b_default_plan_quantizes_every_block_linear_and_nothing_else():
    plan = plan_quantization(_meta_wan(WAN21_T2V_14B), {"": FP8, **KEEP_WAN})
    quantized = [n for n, c in plan.items() if c is not None]
    assert len(quantized) == 40 * 10 and all(n.startswith("blocks.") for n in quantized)
    assert plan.keys() - set(quantized) == {
        "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1",
        "head.head",
    }  # fmt: skip


def test_quantize_dynamic_on_a_meta_model_builds_the_structure_without_memory():
    model = _meta_wan()
    quantize_dynamic(model, {"": FP8, **KEEP_WAN}, backend="torch")
    layer = model.blocks[0].ffn[0]
    assert isinstance(layer, QuantLinear) and layer.qweight.is_meta and layer.qweight.dtype == torch.float8_e4m3fn


def test_a_diffusers_key_on_a_layer_without_linears_is_refused():
    with pytest.raises(QuantizationError, match=r"'blocks.0.norm3' holds no linear layer \(LayerNormAffine\)"):
        plan_quantization(_meta_wan(), {"": FP8, **KEEP_WAN, "blocks.0.norm2": FP8})
