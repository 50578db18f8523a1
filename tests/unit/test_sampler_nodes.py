"""The sampler nodes (in this process, with ComfyUI's modules): native widget names and defaults, the Scheduler node
against ComfyUI's BasicScheduler, LATENTs the DAX sampler cannot honour refused before any model is built, and two
chained Sampler Advanced nodes equal to one Multi-GPU Sampler."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dax_core.runtime import sampling
from dax_core.runtime.samplers import SAMPLERS
from dax_core.runtime.schedules import SCHEDULERS
from tests.numerics import rel_error
from tests.unit.comfy_native import comfyui_nodes, flow_sampling
from tests.unit.group_helpers import TINY, tiny_recipe
from tests.unit.node_modules import node_module


@pytest.fixture(scope="module")
def comfy(comfyui_importable):
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler

    nodes = comfyui_nodes(comfyui_importable)
    return SimpleNamespace(nodes=nodes, custom=comfy_extras.nodes_custom_sampler, samplers=comfy.samplers)


@pytest.fixture
def sampler(comfyui_importable):
    return node_module("sampler")


def _required(node) -> dict:
    return node.INPUT_TYPES()["required"]


def test_the_new_widgets_have_the_native_names_options_and_defaults(comfy, sampler):
    native_advanced, ours_advanced = _required(comfy.nodes.KSamplerAdvanced), _required(sampler.DaxSamplerAdvanced)
    for name in ("add_noise", "noise_seed", "start_at_step", "end_at_step", "return_with_leftover_noise"):
        native, ours = native_advanced[name], ours_advanced[name]
        assert ours[0] == native[0], name  # the type, or the combo's options in their order (the first is the default)
        native_options, our_options = (native[1] if len(native) > 1 else {}), (ours[1] if len(ours) > 1 else {})
        assert {k: v for k, v in our_options.items() if k != "tooltip"} == native_options, name
    native_denoise, our_denoise = (
        _required(comfy.nodes.KSampler)["denoise"],
        _required(sampler.DaxMultiGPUSampler)["denoise"],
    )
    assert our_denoise[0] == "FLOAT" and {k: v for k, v in our_denoise[1].items() if k != "tooltip"} == {
        k: native_denoise[1][k] for k in ("default", "min", "max", "step")
    }
    assert (
        ours_advanced["sampler_name"][0] == _required(sampler.DaxMultiGPUSampler)["sampler_name"][0] == list(SAMPLERS)
    )
    # every sampler and scheduler name but Wan's own solver is ComfyUI's, meaning what it means there
    assert set(SAMPLERS) - set(comfy.samplers.KSampler.SAMPLERS) == {"wan_unipc", "wan_unipc_bh1"}
    assert set(SCHEDULERS) <= set(comfy.samplers.KSampler.SCHEDULERS)
    assert sampler.DaxSamplerAdvanced.INPUT_TYPES()["optional"]["sigmas"][0] == "SIGMAS"


@pytest.mark.parametrize(
    ("scheduler", "steps", "denoise"), [("simple", 20, 1.0), ("beta", 7, 0.45), ("normal", 30, 0.8)]
)
def test_the_scheduler_node_gives_basic_schedulers_sigmas(comfy, comfyui_importable, scheduler, steps, denoise):
    sampling = flow_sampling(5.0)
    model = SimpleNamespace(get_model_object=lambda name: {"model_sampling": sampling}[name])
    (expected,) = comfy.custom.BasicScheduler().get_sigmas(model, scheduler, steps, denoise)
    (got,) = node_module("scheduler").DaxScheduler().get_sigmas(5.0, scheduler, steps, denoise)
    assert torch.equal(got, expected)  # the same float32 schedule: bit-identical


def _text(seed: int) -> list:
    return [[torch.randn(1, 6, TINY["text_dim"], generator=torch.Generator().manual_seed(seed)), {}]]


def _sample(node, recipe, latent: dict, **widgets) -> dict:
    defaults = {"seed": 5, "steps": 4, "cfg": 5.0, "shift": 8.0, "sampler_name": "euler", "scheduler": "simple",
                "gpus": 1}  # fmt: skip
    if "add_noise" in widgets:  # the advanced node's names
        defaults["noise_seed"] = defaults.pop("seed")
    return node().sample(recipe, _text(1), _text(2), latent, **{**defaults, **widgets})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"noise_mask": torch.ones(1, 3, 2, 8, 8)}, r"noise_mask has shape \(1, 3, 2, 8, 8\)"),
        ({"batch_index": [3]}, "latent_image carries a batch_index"),
    ],
)
def test_a_latent_the_sampler_cannot_honour_is_refused_before_any_model_is_built(sampler, tmp_path, monkeypatch,
                                                                                extra, message):  # fmt: skip
    built: list = []
    monkeypatch.setattr(sampling, "build_engine", lambda recipe, *_: built.append(recipe))
    latent = {"samples": torch.zeros(1, 16, 2, 8, 8), **extra}
    with pytest.raises(ValueError, match=message):
        _sample(sampler.DaxMultiGPUSampler, tiny_recipe(tmp_path), latent, denoise=1.0)
    with pytest.raises(ValueError, match=message):
        _sample(sampler.DaxSamplerAdvanced, tiny_recipe(tmp_path), latent, add_noise="enable", start_at_step=0,
                end_at_step=10000, return_with_leftover_noise="disable")  # fmt: skip
    assert built == []


def test_two_chained_advanced_nodes_equal_one_sampler_node(sampler, tmp_path):
    # Euler over steps 0-2 (leftover noise returned) then 2-4 (no noise added) is one run over 0-4: the latent
    # round trip between the two is float32 rounding (~1e-7), a lost rescale would be off by ~sigma (0.9 here).
    recipe = tiny_recipe(tmp_path)
    latent = {"samples": torch.zeros(1, 16, 2, 8, 8), "extra_key": "kept"}
    whole = _sample(sampler.DaxMultiGPUSampler, recipe, latent, denoise=1.0)
    first = _sample(sampler.DaxSamplerAdvanced, recipe, latent, add_noise="enable", start_at_step=0, end_at_step=2,
                    return_with_leftover_noise="enable")  # fmt: skip
    (first_latent,) = first["result"]
    second = _sample(sampler.DaxSamplerAdvanced, recipe, first_latent, add_noise="disable", start_at_step=2,
                     end_at_step=10000, return_with_leftover_noise="disable")  # fmt: skip
    (out,) = second["result"]
    assert out["extra_key"] == "kept"
    assert rel_error(out["samples"], whole["result"][0]["samples"]) < 1e-5
    assert second["ui"]["dax_summary"][0].startswith("2 steps")
    # the same second half from a SIGMAS input: the schedule's sigmas from step 2 on
    (sigmas,) = node_module("scheduler").DaxScheduler().get_sigmas(8.0, "simple", 4, 1.0)
    again = _sample(sampler.DaxSamplerAdvanced, recipe, first_latent, add_noise="disable", start_at_step=0,
                    end_at_step=10000, return_with_leftover_noise="disable", sigmas=sigmas[2:])  # fmt: skip
    assert torch.equal(again["result"][0]["samples"], out["samples"])


def test_low_noise_cfg_on_one_model_is_refused_and_zero_means_the_same_cfg(sampler, tmp_path):
    recipe, latent = tiny_recipe(tmp_path), {"samples": torch.zeros(1, 16, 2, 8, 8)}
    with pytest.raises(ValueError, match=r"low_noise_cfg guides the low-noise expert of a two-expert Wan2\.2 model"):
        _sample(sampler.DaxMultiGPUSampler, recipe, latent, denoise=1.0, low_noise_cfg=3.0)
    same = _sample(sampler.DaxMultiGPUSampler, recipe, latent, denoise=1.0, low_noise_cfg=0.0)
    plain = _sample(sampler.DaxMultiGPUSampler, recipe, latent, denoise=1.0)
    assert torch.equal(same["result"][0]["samples"], plain["result"][0]["samples"])
    inputs = sampler.DaxSamplerAdvanced.INPUT_TYPES()["optional"]
    assert (
        inputs["low_noise_cfg"][1]["default"] == 0.0
        and "low_noise_cfg" in sampler.DaxMultiGPUSampler.INPUT_TYPES()["optional"]
    )
