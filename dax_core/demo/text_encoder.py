"""A random T5-base encoder in Hugging Face naming: a stand-in text encoder for tests and the no-weights demo.

ComfyUI's CLIPLoader (type ``wan``) recognises a T5-base state dict without a ``spiece_model`` key and loads it as
its SA-T5 model with the T5 tokenizer it ships, giving 768-wide conditioning (the tiny DiT's ``text_dim``).
The weights are random (Hugging Face's T5 initialisation scales), so activations stay finite but carry no meaning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

log = logging.getLogger(__name__)

VOCAB = 32128
D_MODEL = 768
D_KV = 64
NUM_HEADS = 12
D_FF = 3072
NUM_LAYERS = 12
BUCKETS = 32


def t5_base_schema() -> dict[str, tuple[int, ...]]:
    """Every parameter of the T5-base encoder (ComfyUI's ``t5_config_base.json``) with its shape."""
    inner = D_KV * NUM_HEADS
    schema: dict[str, tuple[int, ...]] = {"shared.weight": (VOCAB, D_MODEL)}
    for i in range(NUM_LAYERS):
        p = f"encoder.block.{i}.layer"
        schema[f"{p}.0.SelfAttention.q.weight"] = (inner, D_MODEL)
        schema[f"{p}.0.SelfAttention.k.weight"] = (inner, D_MODEL)
        schema[f"{p}.0.SelfAttention.v.weight"] = (inner, D_MODEL)
        schema[f"{p}.0.SelfAttention.o.weight"] = (D_MODEL, inner)
        if i == 0:  # T5 shares the first block's relative position bias with every block
            schema[f"{p}.0.SelfAttention.relative_attention_bias.weight"] = (BUCKETS, NUM_HEADS)
        schema[f"{p}.0.layer_norm.weight"] = (D_MODEL,)
        schema[f"{p}.1.DenseReluDense.wi.weight"] = (D_FF, D_MODEL)
        schema[f"{p}.1.DenseReluDense.wo.weight"] = (D_MODEL, D_FF)
        schema[f"{p}.1.layer_norm.weight"] = (D_MODEL,)
    schema["encoder.final_layer_norm.weight"] = (D_MODEL,)
    return schema


def _init_std(name: str) -> float | None:
    """Hugging Face's T5 initialisation (factor 1.0); None for layer norms (ones)."""
    if name.endswith("layer_norm.weight"):
        return None
    if name == "shared.weight":
        return 1.0
    if ".q." in name:
        return (D_MODEL * D_KV) ** -0.5
    if ".o." in name:
        return (NUM_HEADS * D_KV) ** -0.5
    if ".wo." in name:
        return D_FF**-0.5
    return D_MODEL**-0.5  # k, v, wi, relative_attention_bias


def write_random_t5_base(path: str | Path, seed: int = 0) -> Path:
    """Write a random fp16 T5-base encoder (about 220 MB) to ``path``; returns the path."""
    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in t5_base_schema().items():
        std = _init_std(name)
        value = torch.ones(shape) if std is None else torch.randn(shape, generator=gen) * std
        tensors[name] = value.to(torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", "dax_demo": f"random T5-base encoder, seed {seed}"})
    log.info("wrote a random T5-base text encoder to %s", path)
    return path
