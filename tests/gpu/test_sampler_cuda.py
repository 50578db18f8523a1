"""The samplers with the latent on the GPU: every sampler and step range gives the CPU engine's result, the
ancestral noise drawn as ComfyUI draws it on a GPU (a generator on the latent's device, seeded with the seed)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanModel
from dax_core.recipe import Recipe
from dax_core.runtime import samplers
from dax_core.runtime.engine import SampleRequest, WanEngine
from tests.numerics import rel_error

SPEC = WanSpec(dim=128, num_layers=2, num_heads=2, ffn_dim=256, text_dim=64)


@pytest.fixture(scope="module")
def engines():
    model = WanModel(SPEC, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 / max(p.shape[-1], 1) ** 0.5))
    on_gpu = WanModel(SPEC, dtype=torch.float32, device="cuda")
    on_gpu.load_state_dict(model.state_dict())
    recipe = Recipe("unused.safetensors", compute_dtype="fp32")
    return WanEngine(model.eval(), recipe, "cpu"), WanEngine(on_gpu.eval(), recipe, "cuda")


@pytest.fixture
def full_float32():
    """No TF32 (cuDNN's convolutions use it by default): float32 on the GPU as on the CPU."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def _request(sampler: str, **options) -> SampleRequest:
    g = torch.Generator().manual_seed(1)
    return SampleRequest(
        positive=torch.randn(1, 8, SPEC.text_dim, generator=g),
        negative=torch.randn(1, 8, SPEC.text_dim, generator=g),
        latent=torch.zeros(1, 16, 3, 8, 8),
        seed=7,
        steps=6,
        cfg=5.0,
        sampler=sampler,
        **options,
    )


@pytest.mark.parametrize("options", [{}, {"end_at_step": 3, "return_with_leftover_noise": True}, {"denoise": 0.6}])
@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_every_sampler_on_the_gpu_gives_the_cpu_result(engines, full_float32, monkeypatch, sampler, options):
    cpu, gpu = engines
    req = _request(sampler, **options)
    if req.denoise < 1:
        req = dataclasses.replace(req, latent=torch.randn(req.latent.shape, generator=torch.Generator().manual_seed(2)))
    drawn: list[torch.Tensor] = []
    real_noise_sampler = samplers.default_noise_sampler

    def recording(x, seed):  # the GPU run draws ComfyUI's GPU noise; the CPU run is handed the same draws
        draw = real_noise_sampler(x, seed)
        return lambda: drawn.append(draw()) or drawn[-1]

    monkeypatch.setattr(samplers, "default_noise_sampler", recording)
    on_gpu = gpu.sample(req).latent
    if sampler in samplers.NOISE_INJECTING:
        assert drawn and all(d.device.type == "cuda" for d in drawn)
        generator = torch.Generator(device="cuda").manual_seed(req.seed)
        assert torch.equal(drawn[0], torch.randn(drawn[0].shape, generator=generator, device="cuda"))
    replay = iter([d.cpu() for d in drawn])
    monkeypatch.setattr(samplers, "default_noise_sampler", lambda x, seed: lambda: next(replay))
    # float32 on both devices: reductions in another order, ~1e-6 per model call, over 6 steps at cfg 5
    assert rel_error(on_gpu, cpu.sample(req).latent) < 1e-4
