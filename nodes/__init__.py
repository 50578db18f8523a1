"""ComfyUI nodes of DAX: thin wrappers that turn widgets into dax_core configs and make one dax_core call."""

from .load_wan import DaxLoadWan
from .quantize import DaxQuantizeLinear
from .sampler import DaxMultiGPUSampler

NODE_CLASS_MAPPINGS = {
    "DaxLoadWan": DaxLoadWan,
    "DaxMultiGPUSampler": DaxMultiGPUSampler,
    "DaxQuantizeLinear": DaxQuantizeLinear,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DaxLoadWan": "Load Wan DAX",
    "DaxMultiGPUSampler": "Multi-GPU Sampler (DAX)",
    "DaxQuantizeLinear": "Quantize Linear (DAX)",
}
