"""CUDA graphs of the block stack replay exactly what the eager block stack computes: bit for bit, for every input
of a shape, with and without FP8 linears, SageAttention2 and torch.compile."""

from __future__ import annotations

import pytest
import torch

from dax_core.accelerations import BuildEnv, apply_accelerations
from dax_core.bench.weights import build_model
from dax_core.compile.cuda_graphs import disable_cuda_graphs, enable_cuda_graphs
from dax_core.models.spec import WanSpec
from dax_core.recipe import Recipe

SPEC = WanSpec(dim=512, num_layers=3, num_heads=4, ffn_dim=1024, text_dim=256)
SAGE = {"kind": "attention", "backend": "sage"}
FP8 = {"kind": "quantize"}
COMPILE = {"kind": "compile"}


def _inputs(seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(2, 16, 5, 16, 24, generator=g, device="cuda")
    ctx = torch.randn(2, 40, SPEC.text_dim, generator=g, device="cuda").bfloat16()
    return x, torch.tensor([900.0, 300.0], device="cuda") - seed, ctx


@pytest.mark.parametrize(
    "accelerations", [[], [FP8], [FP8, SAGE], [FP8, COMPILE], [FP8, SAGE, COMPILE]],
    ids=["bf16", "fp8", "fp8-sage", "fp8-compile", "fp8-sage-compile"],
)  # fmt: skip
@torch.inference_mode()
def test_graph_replay_equals_eager_bit_for_bit(accelerations):
    if SAGE in accelerations:
        from dax_core.attention.registry import available_backends

        if "sage" not in available_backends():
            pytest.skip("SageAttention is not installed here")
    if FP8 in accelerations and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 linears need compute capability 8.9+")
    torch._dynamo.reset()
    model = build_model(SPEC, "cuda", torch.bfloat16, seed=0)
    apply_accelerations(model, Recipe.from_dict({"weights": "random", "accelerations": accelerations}),
                        BuildEnv(torch.device("cuda")))  # fmt: skip
    inputs = [_inputs(seed) for seed in range(3)]
    eager = [model(*i) for i in inputs]
    graphs = enable_cuda_graphs(model)
    replayed = [model(*i) for i in inputs]  # the first captures, the others replay with new inputs
    assert graphs.captures == 1
    for a, b in zip(eager, replayed, strict=True):
        assert torch.equal(a, b)
    disable_cuda_graphs(model)
    assert torch.equal(model(*inputs[0]), eager[0])
