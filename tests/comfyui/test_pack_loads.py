"""The pack loads through ComfyUI's own custom-node loader and its nodes are served."""

from __future__ import annotations

import pytest

from dax_core.demo.comfy_server import PACK_NAME, ComfyServer

pytestmark = pytest.mark.comfyui


def test_pack_imports_without_error(comfy_server: ComfyServer) -> None:
    log = comfy_server.log_text()
    pack_lines = [line for line in log.splitlines() if PACK_NAME in line]
    assert pack_lines, f"ComfyUI never tried to load {PACK_NAME}\n{comfy_server.log_tail()}"
    assert not [line for line in pack_lines if "IMPORT FAILED" in line or "Cannot import" in line], log


def test_nodes_are_listed(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    loader, sampler = info.get("DaxLoadWan"), info.get("DaxMultiGPUSampler")
    assert loader and sampler, f"DAX nodes missing from /object_info\n{comfy_server.log_tail()}"
    assert loader["display_name"] == "Load Wan DAX"
    assert sampler["display_name"] == "Multi-GPU Sampler (DAX)"
    assert loader["output"] == ["DAX_MODEL"]
    assert sampler["output"] == ["LATENT"]
    sampler_inputs = sampler["input"]["required"]
    assert sampler_inputs["dax_model"][0] == "DAX_MODEL"
    assert {"positive", "negative", "latent_image", "seed", "steps", "cfg", "shift", "gpus"} <= set(sampler_inputs)
    assert sampler_inputs["shift"][1]["default"] == 8.0
    assert {"euler", "uni_pc_bh2", "wan_unipc"} <= set(sampler_inputs["sampler_name"][0])
    assert sampler_inputs["sampler_name"][1]["default"] == "wan_unipc"  # Wan's own solver, as before
    assert sampler_inputs["denoise"][1]["default"] == 1.0


def test_the_advanced_sampler_and_the_scheduler_are_listed(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    advanced, scheduler = info.get("DaxSamplerAdvanced"), info.get("DaxScheduler")
    assert advanced and scheduler, f"DAX nodes missing from /object_info\n{comfy_server.log_tail()}"
    assert advanced["display_name"] == "Sampler Advanced (DAX)" and advanced["output"] == ["LATENT"]
    assert scheduler["display_name"] == "Scheduler (DAX)" and scheduler["output"] == ["SIGMAS"]
    required = advanced["input"]["required"]
    assert required["add_noise"][0] == ["enable", "disable"]
    assert required["return_with_leftover_noise"][0] == ["disable", "enable"]
    assert (required["start_at_step"][1]["default"], required["end_at_step"][1]["default"]) == (0, 10000)
    assert advanced["input"]["optional"]["sigmas"][0] == "SIGMAS"
