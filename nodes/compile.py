"""Compile: torch.compile of the transformer blocks -> a new DAX_MODEL recipe."""

from __future__ import annotations

from dax_core.compile import CompileConfig
from dax_core.compile.regional import BACKENDS, MODES
from dax_core.recipe import Recipe

TOOLTIPS = {
    "mode": "default compiles fastest; max-autotune-no-cudagraphs tunes the GEMM and fused kernels (longer warm-up).",
    "backend": "inductor generates fused kernels; aot_eager and eager are for debugging.",
    "dynamic": "Compile for dynamic shapes: fewer recompiles across resolutions, slightly slower kernels.",
    "cuda_graphs": "Replay the compiled block stack as one CUDA graph per shape (captured on the first step): no "
    "Python or launch gaps, which matters most for 1.3B. One GPU only; holds one forward's working memory.",
}


class DaxCompile:
    """Compile each Wan transformer block once (the compiled code serves all blocks); warm-up shows in the sampler."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dax_model": ("DAX_MODEL",),
                "mode": (list(MODES), {"default": "default", "tooltip": TOOLTIPS["mode"]}),
                "backend": (list(BACKENDS), {"default": "inductor", "tooltip": TOOLTIPS["backend"]}),
                "dynamic": ("BOOLEAN", {"default": False, "tooltip": TOOLTIPS["dynamic"]}),
            },
            "optional": {
                "cuda_graphs": ("BOOLEAN", {"default": False, "tooltip": TOOLTIPS["cuda_graphs"]}),
            },
        }

    RETURN_TYPES = ("DAX_MODEL",)
    RETURN_NAMES = ("dax_model",)
    FUNCTION = "apply"
    CATEGORY = "DAX"
    DESCRIPTION = "Regional torch.compile: fuses norms, modulation, activation quantization and collectives."

    def apply(
        self, dax_model: Recipe, mode: str, backend: str, dynamic: bool, cuda_graphs: bool = False
    ) -> tuple[Recipe]:
        if mode != "default" and backend != "inductor":
            raise ValueError(f"mode {mode!r} needs the inductor backend; pick inductor or mode 'default'")
        config = CompileConfig(mode=mode, backend=backend, dynamic=dynamic, cuda_graphs=cuda_graphs)
        return (dax_model.with_acceleration(config),)
