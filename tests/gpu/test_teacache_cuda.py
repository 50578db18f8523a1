"""TeaCache on the GPU: exact at threshold 0, and residuals kept in pinned CPU memory give the GPU-kept result."""

from __future__ import annotations

import torch

from dax_core.cache.teacache import TeaCache
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanModel
from dax_core.recipe import Recipe
from dax_core.runtime.engine import SampleRequest, WanEngine

SPEC = WanSpec(dim=256, num_layers=2, num_heads=4, ffn_dim=512, text_dim=64)


def _engine() -> WanEngine:
    model = WanModel(SPEC, device="cuda", dtype=torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, device="cuda") * (0.5 / max(p.shape[-1], 1) ** 0.5))
    return WanEngine(model.eval(), Recipe("unused.safetensors"), "cuda")


def _request() -> SampleRequest:
    g = torch.Generator().manual_seed(1)
    return SampleRequest(
        positive=torch.randn(1, 12, SPEC.text_dim, generator=g),
        negative=torch.randn(1, 12, SPEC.text_dim, generator=g),
        latent=torch.zeros(1, 16, 5, 16, 16),
        seed=2,
        steps=12,
        cfg=5.0,
        sampler="wan_unipc",
    )


def test_threshold_zero_is_exact_and_cpu_residuals_match_gpu_residuals():
    engine, req = _engine(), _request()
    plain = engine.sample(req).latent
    engine.model.step_cache = TeaCache((1.0,), threshold=0.0, mode="e")
    assert torch.equal(engine.sample(req).latent, plain)

    engine.model.step_cache = TeaCache((1.0,), threshold=2.5, mode="e")
    on_gpu = engine.sample(req)
    cache = TeaCache((1.0,), threshold=2.5, mode="e", cache_device="cpu")
    engine.model.step_cache = cache
    stored = []
    on_cpu = engine.sample(req, on_step=lambda *_: stored.extend(map(cache.cached_residual, ("cond", "uncond"))))
    assert on_gpu.step_cache.branch("cond").pattern == "CSSCSSCSSCSC"
    assert on_cpu.step_cache == on_gpu.step_cache
    assert stored and all(r.device.type == "cpu" and r.is_pinned() for r in stored)
    # the same bf16 residuals, copied out and back: bit-identical sampling
    assert torch.equal(on_cpu.latent, on_gpu.latent)
    assert not torch.equal(on_gpu.latent, plain)  # skipping really changed the result
