"""ComfyUI nodes of DAX: thin wrappers that turn widgets into dax_core configs and make one dax_core call."""

from .attention import DaxSetAttentionBackend
from .compile import DaxCompile
from .load_wan import DaxLoadWan
from .lora import DaxLoadLora
from .magcache import DaxMagcache
from .quantize import DaxQuantizeLinear
from .radial import DaxRadialAttention
from .sampler import DaxMultiGPUSampler, DaxSamplerAdvanced
from .scheduler import DaxScheduler
from .teacache import DaxTeacache

NODE_CLASS_MAPPINGS = {
    "DaxLoadWan": DaxLoadWan,
    "DaxLoadLora": DaxLoadLora,
    "DaxMultiGPUSampler": DaxMultiGPUSampler,
    "DaxSamplerAdvanced": DaxSamplerAdvanced,
    "DaxScheduler": DaxScheduler,
    "DaxQuantizeLinear": DaxQuantizeLinear,
    "DaxSetAttentionBackend": DaxSetAttentionBackend,
    "DaxRadialAttention": DaxRadialAttention,
    "DaxCompile": DaxCompile,
    "DaxTeacache": DaxTeacache,
    "DaxMagcache": DaxMagcache,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DaxLoadWan": "Load Wan DAX",
    "DaxLoadLora": "Load LoRA (DAX)",
    "DaxMultiGPUSampler": "Multi-GPU Sampler (DAX)",
    "DaxSamplerAdvanced": "Sampler Advanced (DAX)",
    "DaxScheduler": "Scheduler (DAX)",
    "DaxQuantizeLinear": "Quantize Linear (DAX)",
    "DaxSetAttentionBackend": "Set Attention Backend (DAX)",
    "DaxRadialAttention": "Radial Attention (DAX)",
    "DaxCompile": "Compile (DAX)",
    "DaxTeacache": "TeaCache (DAX)",
    "DaxMagcache": "MagCache (DAX)",
}
