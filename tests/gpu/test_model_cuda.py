"""The whole model on the GPU in bf16 against the same weights in float64 on the CPU."""

from __future__ import annotations

import torch

from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanModel
from tests.numerics import rel_error

SPEC = WanSpec(dim=512, num_layers=3, num_heads=4, ffn_dim=1024, text_dim=256)


def test_bf16_cuda_forward_tracks_float64():
    g = torch.Generator().manual_seed(0)
    ref = WanModel(SPEC, dtype=torch.float64)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * (0.5 / max(p.shape[-1], 1) ** 0.5))
    state = ref.state_dict()
    fast = WanModel(SPEC, device="cuda", dtype=torch.bfloat16)
    fast.load_state_dict({k: v.to(fast.state_dict()[k].dtype) for k, v in state.items()})
    x = torch.randn(2, 16, 3, 12, 16, generator=g)
    t = torch.tensor([999.0, 10.0])
    ctx = torch.randn(2, 20, SPEC.text_dim, generator=g)
    ref.patch_embedding.double()
    with torch.no_grad():
        expected = ref(x.double(), t.double(), ctx.double())
        got = fast(x.cuda(), t.cuda(), ctx.cuda()).double().cpu()
    rel = rel_error(got, expected)
    # bf16 weights and activations over 3 blocks: ~1e-2; a wrong kernel gives O(1)
    assert rel < 3e-2, rel
