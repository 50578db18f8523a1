"""Seeded tiny Wan models, engine and request shared by the tests (also imported by worker processes)."""

from __future__ import annotations

import torch

from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanModel
from dax_core.recipe import Recipe
from dax_core.runtime.engine import SampleRequest, WanEngine

TINY = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=32)


def tiny_model(seed: int = 0) -> WanModel:
    model = WanModel(TINY, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def fill_checkpoint_like_(model: WanModel, seed: int = 0) -> WanModel:
    """Seeded like a checkpoint (and the benchmarks): 0.5/sqrt(fan_in) weights, 0.1 modulation, norm weights
    near 1. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.1 if name.endswith("modulation") else 0.5 / p.shape[-1] ** 0.5 if p.ndim >= 2 else 0.02
            values = torch.randn(p.shape, generator=g) * std
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                values += 1.0
            p.copy_(values)
    return model.eval()


def tiny_engine(seed: int = 0) -> WanEngine:
    return WanEngine(tiny_model(seed), Recipe("unused.safetensors"), "cpu")


def tiny_request(
    prompt_seed: int = 1, steps: int = 12, cfg: float = 5.0, seed: int = 3, negative_tokens: int = 7
) -> SampleRequest:
    g = torch.Generator().manual_seed(prompt_seed)
    return SampleRequest(
        positive=torch.randn(1, 7, TINY.text_dim, generator=g),
        negative=torch.randn(1, negative_tokens, TINY.text_dim, generator=g),
        latent=torch.zeros(1, 16, 3, 8, 8),
        seed=seed,
        steps=steps,
        cfg=cfg,
        sampler="euler",
    )
