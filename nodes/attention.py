"""Set Attention Backend: DAX_MODEL -> DAX_MODEL with the attention backends (and SageAttention's options) chosen."""

from __future__ import annotations

import logging

import comfy.model_management as mm

from dax_core.attention import backend_names
from dax_core.attention.config import SAME, AttentionConfig
from dax_core.attention.sage import PV_ACCUM, QK_QUANT
from dax_core.recipe import Recipe

from .model_socket import dax_model_input, patched_model_tooltip
from .node_text import show_under_node

log = logging.getLogger(__name__)

TOOLTIPS = {
    "backend": "Self-attention kernel. auto: the fastest installed here (Hopper: SageAttention2 > cuDNN > flash > "
    "SDPA). sdpa: PyTorch picks. sdpa_cudnn / sdpa_flash: PyTorch's cuDNN / flash kernel. flash: the FlashAttention "
    "3/2 package. sage: SageAttention (int8 Q·K; about 1e-2 further from exact than the bf16 kernels).",
    "cross_attention": "Kernel for cross-attention to the 512 text tokens (same: as self-attention).",
    "sage_qk_quant": "SageAttention2: int8 scale per thread (more accurate) or per warp. auto: SageAttention's choice.",
    "sage_pv_accum": "SageAttention2 P·V accumulation. Hopper offers fp32+fp32; Ada fp32+fp16 (fast), fp32+fp32, "
    "fp32; Ampere fp32, fp16+fp32, fp16. auto: SageAttention's choice for the GPU.",
}


class DaxSetAttentionBackend:
    """Choose the attention kernels the DAX sampler runs; the node checks they are installed on this GPU."""

    @classmethod
    def INPUT_TYPES(cls):
        names = backend_names()
        return {
            "required": {
                "dax_model": dax_model_input(),
                "backend": (names, {"default": "auto", "tooltip": TOOLTIPS["backend"]}),
                "cross_attention": ([SAME, *names], {"default": SAME, "tooltip": TOOLTIPS["cross_attention"]}),
                "sage_qk_quant": (list(QK_QUANT), {"default": "auto", "tooltip": TOOLTIPS["sage_qk_quant"]}),
                "sage_pv_accum": (list(PV_ACCUM), {"default": "auto", "tooltip": TOOLTIPS["sage_pv_accum"]}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},  # where the kernels chosen are shown
        }

    RETURN_TYPES = ("DAX_MODEL",)
    RETURN_NAMES = ("dax_model",)
    OUTPUT_TOOLTIPS = (patched_model_tooltip("these attention kernels"),)
    FUNCTION = "apply"
    CATEGORY = "DAX"
    DESCRIPTION = "Pick the attention kernels (SDPA, cuDNN, FlashAttention, SageAttention2) for the DAX sampler."

    def apply(self, dax_model: Recipe, backend: str, cross_attention: str, sage_qk_quant: str, sage_pv_accum: str,
              unique_id: str | None = None):  # fmt: skip
        config = AttentionConfig(
            backend=backend, cross_backend=cross_attention, sage_qk_quant=sage_qk_quant, sage_pv_accum=sage_pv_accum
        )
        # Bind on the GPU the sampler will use: a backend that is not installed (with its install hint), a GPU or
        # dtype it cannot serve, or an option its kernel lacks fails here, not in the middle of sampling.
        summary = config.describe(mm.get_torch_device(), dax_model.torch_compute_dtype)
        log.info("Set Attention Backend: %s", summary.replace("\n", "; "))
        show_under_node(unique_id, summary)
        return {"ui": {"dax_summary": [summary]}, "result": (dax_model.with_acceleration(config),)}
