"""A test-only ComfyUI node, installed in the test server's custom_nodes beside the pack (never shipped): it gives
conditioning another width (zero-padded or cut), to send the sampler text its model cannot take while the recipe,
and so the warm worker group, stays the same."""

from __future__ import annotations

import torch


class DaxTestConditioningWidth:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "width": ("INT", {"default": 512, "min": 1})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "resize"
    CATEGORY = "testing"

    def resize(self, conditioning, width):
        out = []
        for emb, extras in conditioning:
            resized = torch.zeros(*emb.shape[:-1], width, dtype=emb.dtype)
            keep = min(width, emb.shape[-1])
            resized[..., :keep] = emb[..., :keep]
            out.append([resized, dict(extras)])
        return (out,)


NODE_CLASS_MAPPINGS = {"DaxTestConditioningWidth": DaxTestConditioningWidth}
