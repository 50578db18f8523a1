"""DAX for ComfyUI: fast Wan2.1 video (FP8/INT8 linears, SageAttention2, TeaCache, torch.compile, multi-GPU)."""

import os
import sys

# dax_core is imported as a top-level package (worker processes rebuild engines from it by name).
_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.insert(0, _here)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
