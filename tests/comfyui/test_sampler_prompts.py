"""The sampler nodes in whole prompts through POST /prompt: Wan2.2-style chained samplers fed by Scheduler (DAX) and
the native SplitSigmas, and LATENTs or step ranges the DAX sampler cannot run failing as node errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dax_core.demo.comfy_server import ComfyServer, PromptFailed

pytestmark = pytest.mark.comfyui

RUN_TIMEOUT = 300.0
STEPS = 4


def _sampler_id(prompt: dict[str, Any]) -> str:
    return next(node_id for node_id, node in prompt.items() if node["class_type"] == "DaxMultiGPUSampler")


SHARED = ("dax_model", "positive", "negative", "steps", "cfg", "shift", "sampler_name", "scheduler", "gpus")


def _advanced(sampler: dict[str, Any], latent: list, sigmas: list, add_noise: str) -> dict[str, Any]:
    inputs = sampler["inputs"]
    return {
        "class_type": "DaxSamplerAdvanced",
        "inputs": {
            **{k: inputs[k] for k in SHARED},
            "latent_image": latent,
            "sigmas": sigmas,
            "add_noise": add_noise,
            "noise_seed": inputs["seed"],
            "start_at_step": 0,
            "end_at_step": 10000,
            "return_with_leftover_noise": "disable",
        },
    }


def test_two_experts_chained_through_split_sigmas_write_a_video(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    prompt = tiny_prompt(seed=31, steps=STEPS)
    sampler_id = _sampler_id(prompt)
    sampler = prompt.pop(sampler_id)
    inputs = sampler["inputs"]
    prompt["sched"] = {"class_type": "DaxScheduler", "inputs": {"shift": inputs["shift"], "scheduler": "simple",
                                                                 "steps": STEPS, "denoise": 1.0}}  # fmt: skip
    prompt["split"] = {"class_type": "SplitSigmas", "inputs": {"sigmas": ["sched", 0], "step": 1}}
    prompt["high"] = _advanced(sampler, inputs["latent_image"], ["split", 0], "enable")
    prompt["high"]["inputs"]["sampler_name"] = "euler_ancestral"
    prompt["low"] = _advanced(sampler, ["high", 0], ["split", 1], "disable")
    for node in prompt.values():  # the decoder takes the second expert's latent
        for name, value in node["inputs"].items():
            if value == [sampler_id, 0]:
                node["inputs"][name] = ["low", 0]
    outputs = comfy_server.run(prompt, timeout=RUN_TIMEOUT)
    assert [p for p in comfy_server.output_files(outputs) if p.suffix == ".mp4"], outputs
    assert outputs["high"]["dax_summary"][0].startswith("1 step in"), outputs["high"]
    assert outputs["low"]["dax_summary"][0].startswith(f"{STEPS - 1} steps in"), outputs["low"]


@pytest.mark.parametrize("gpus", [1, 2], ids=["one-process", "worker-groups"])
def test_two_samplers_each_with_one_wan22_expert_keep_both_experts_loaded(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict], demo_models_of_every_kind: dict, gpus: int
) -> None:
    # Wan2.2 A14B as ComfyUI users chain it: each expert loaded alone (its model choice says which), a Sampler
    # Advanced (DAX) each. The second prompt finds both experts loaded (in ComfyUI's process, or two warm worker
    # groups): neither evicted the other.
    files = demo_models_of_every_kind["wan2.2-a14b"]
    prompt = tiny_prompt(seed=34, steps=STEPS, gpus=gpus)
    sampler_id = _sampler_id(prompt)
    sampler = prompt.pop(sampler_id)
    loader = next(k for k, n in prompt.items() if n["class_type"] == "DaxLoadWan")
    for which, name in (("high", files.model.name), ("low", files.low_noise_model.name)):
        node = {"class_type": "DaxLoadWan", "inputs": dict(prompt[loader]["inputs"])}
        node["inputs"].update(model_name=name, model=f"wan2.2-t2v-a14b-{which}", low_noise_model_name="none")
        prompt[f"load_{which}"] = node
    del prompt[loader]
    prompt["high"] = _advanced(sampler, sampler["inputs"]["latent_image"], None, "enable")
    prompt["low"] = _advanced(sampler, ["high", 0], None, "disable")
    for which in ("high", "low"):
        del prompt[which]["inputs"]["sigmas"]
        prompt[which]["inputs"]["dax_model"] = [f"load_{which}", 0]
    prompt["high"]["inputs"].update(end_at_step=2, return_with_leftover_noise="enable")
    prompt["low"]["inputs"]["start_at_step"] = 2
    for node in prompt.values():  # the decoder takes the low-noise expert's latent
        for name, value in node["inputs"].items():
            if value == [sampler_id, 0]:
                node["inputs"][name] = ["low", 0]
    first = comfy_server.run(prompt, timeout=RUN_TIMEOUT)
    assert [p for p in comfy_server.output_files(first) if p.suffix == ".mp4"], first
    prompt["high"]["inputs"]["noise_seed"] += 1  # a new prompt for the samplers, the same loaders
    prompt["low"]["inputs"]["noise_seed"] += 1
    second = comfy_server.run(prompt, timeout=RUN_TIMEOUT)
    reused = "model already loaded" if gpus == 1 else "warm worker group reused"
    for which in ("high", "low"):
        assert reused in second[which]["dax_summary"][-1], second[which]


def test_a_latent_with_a_noise_mask_is_sampled(comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]) -> None:
    # the mask goes with the request (the unit tier compares masked runs with native KSampler's)
    prompt = tiny_prompt(seed=32, steps=STEPS)
    sampler = prompt[_sampler_id(prompt)]
    prompt["mask"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 64, "height": 64}}
    prompt["masked"] = {"class_type": "SetLatentNoiseMask",
                        "inputs": {"samples": sampler["inputs"]["latent_image"], "mask": ["mask", 0]}}  # fmt: skip
    sampler["inputs"]["latent_image"] = ["masked", 0]
    outputs = comfy_server.run(prompt, timeout=RUN_TIMEOUT)
    assert [p for p in comfy_server.output_files(outputs) if p.suffix == ".mp4"], outputs


def test_an_empty_step_range_is_a_node_error(comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]) -> None:
    prompt = tiny_prompt(seed=33, steps=STEPS)
    sampler = prompt[_sampler_id(prompt)]
    advanced = _advanced(sampler, sampler["inputs"]["latent_image"], None, "enable")
    del advanced["inputs"]["sigmas"]
    advanced["inputs"].update(start_at_step=3, end_at_step=3)
    prompt[_sampler_id(prompt)] = advanced
    with pytest.raises(PromptFailed) as failed:
        comfy_server.run(prompt, timeout=RUN_TIMEOUT)
    assert failed.value.node_type == "DaxSamplerAdvanced"
    assert "start_at_step 3 must be below end_at_step 3" in failed.value.exception_message
