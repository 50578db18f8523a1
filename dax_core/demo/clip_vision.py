"""A random CLIP ViT-H/14 vision tower: a stand-in for ``clip_vision_h.safetensors`` (what Wan2.1 I2V and FLF2V
encode their images with) in tests and the no-weights demo.

ComfyUI's CLIPVisionLoader picks the model's configuration from the key names alone (a 32-layer ViT-H when
``vision_model.encoder.layers.30.*`` is present) and builds it at that size, so the file has ViT-H's real shapes
(632 M parameters): the encoder's linear weights are stored in float8 (630 MB), the rest in float16, and ComfyUI
upcasts them as it loads. The key/shape schema is written here from the architecture (as ComfyUI builds it in
``comfy/clip_model.py`` from ``clip_vision_config_h.json``: hidden 1280, 32 layers, MLP 5120, 14-pixel patches at
224 pixels, projection 1024); a ComfyUI-tier test checks it against ComfyUI's module. Weights are random, scaled so
that the features stay finite.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

log = logging.getLogger(__name__)

HIDDEN, LAYERS, MLP, PATCH, IMAGE, PROJECTION = 1280, 32, 5120, 14, 224, 1024
TOKENS = (IMAGE // PATCH) ** 2 + 1  # 257: the class token and 16 x 16 patches


def clip_vision_h_schema() -> dict[str, tuple[int, ...]]:
    """Every tensor of ComfyUI's CLIP ViT-H vision model with its shape (transformers' key names)."""
    v = "vision_model"
    schema: dict[str, tuple[int, ...]] = {
        f"{v}.embeddings.class_embedding": (HIDDEN,),
        f"{v}.embeddings.patch_embedding.weight": (HIDDEN, 3, PATCH, PATCH),
        f"{v}.embeddings.position_embedding.weight": (TOKENS, HIDDEN),
        f"{v}.pre_layrnorm.weight": (HIDDEN,),
        f"{v}.pre_layrnorm.bias": (HIDDEN,),
        f"{v}.post_layernorm.weight": (HIDDEN,),
        f"{v}.post_layernorm.bias": (HIDDEN,),
        "visual_projection.weight": (PROJECTION, HIDDEN),
    }
    for i in range(LAYERS):
        layer = f"{v}.encoder.layers.{i}"
        for norm in ("layer_norm1", "layer_norm2"):
            schema[f"{layer}.{norm}.weight"] = schema[f"{layer}.{norm}.bias"] = (HIDDEN,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            schema[f"{layer}.self_attn.{proj}.weight"] = (HIDDEN, HIDDEN)
            schema[f"{layer}.self_attn.{proj}.bias"] = (HIDDEN,)
        schema[f"{layer}.mlp.fc1.weight"], schema[f"{layer}.mlp.fc1.bias"] = (MLP, HIDDEN), (MLP,)
        schema[f"{layer}.mlp.fc2.weight"], schema[f"{layer}.mlp.fc2.bias"] = (HIDDEN, MLP), (HIDDEN,)
    return schema


def write_random_clip_vision_h(path: str | Path, seed: int = 0) -> Path:
    """Write the random ViT-H vision tower to ``path`` (about 640 MB)."""
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in clip_vision_h_schema().items():
        noise = torch.randn(shape, generator=g)
        if "norm" in name and name.endswith(".weight"):
            tensors[name] = (1 + 0.1 * noise).half()
        elif name.endswith(".bias"):
            tensors[name] = (0.02 * noise).half()
        elif ".encoder.layers." in name:  # the linears: most of the bytes
            tensors[name] = (noise / math.sqrt(shape[1])).to(torch.float8_e4m3fn)
        else:  # embeddings, patch embedding, projection
            tensors[name] = (noise / math.sqrt(math.prod(shape[1:]) if len(shape) > 1 else 1.0) * 0.5).half()
    path = Path(path)
    save_file(tensors, str(path))
    log.info("wrote %s: random CLIP ViT-H/14 vision tower (%.0f MB)", path, path.stat().st_size / 2**20)
    return path
