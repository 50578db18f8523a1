"""ComfyUI nodes of DAX: thin wrappers that turn widgets into dax_core configs and make one dax_core call."""

from .compile import DaxCompile
from .load_wan import DaxLoadWan
from .sampler import DaxMultiGPUSampler

NODE_CLASS_MAPPINGS = {
    "DaxLoadWan": DaxLoadWan,
    "DaxMultiGPUSampler": DaxMultiGPUSampler,
    "DaxCompile": DaxCompile,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DaxLoadWan": "Load Wan DAX",
    "DaxMultiGPUSampler": "Multi-GPU Sampler (DAX)",
    "DaxCompile": "Compile (DAX)",
}
