"""ComfyUI's own pieces that the unit tier compares DAX against. Call these only from tests that take the
``comfyui_importable`` fixture (it puts ComfyUI on the path and sets its CPU mode)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import torch


def comfyui_nodes(comfyui_dir: Path) -> ModuleType:
    """ComfyUI's nodes.py (KSampler, KSamplerAdvanced, ...), under another name: this repository's ``nodes`` package
    would shadow it."""
    spec = importlib.util.spec_from_file_location("comfyui_nodes", comfyui_dir / "nodes.py")
    nodes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nodes)
    return nodes


def flow_sampling(shift: float, model_config: Any = None) -> Any:
    """What ComfyUI gives a Wan model (ModelSamplingSD3 with ``shift``): discrete flow matching, CONST."""
    import comfy.model_sampling

    class FlowSampling(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
        pass

    sampling = FlowSampling(model_config)
    sampling.set_parameters(shift=shift, multiplier=1000)
    return sampling


def native_patcher(state: dict[str, torch.Tensor], shift: float) -> Any:
    """ComfyUI's float32 model of a Wan state dict, as its loader builds it, sampling at ``shift``."""
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model_state_dict(dict(state), model_options={"dtype": torch.float32})
    assert patcher is not None, "ComfyUI did not recognise the Wan state dict"
    patcher.add_object_patch("model_sampling", flow_sampling(shift, patcher.model.model_config))
    return patcher
