"""CUDA graphs of the block stack replay exactly what the eager block stack computes: bit for bit, for every input
of a shape, with and without FP8 linears, cuDNN attention and torch.compile; SageAttention2's CUDA kernels, which a
graph cannot record, are refused before any capture."""

from __future__ import annotations

import pytest
import torch

from dax_core.accelerations import BuildEnv, apply_accelerations
from dax_core.attention.registry import available_backends
from dax_core.bench.weights import build_model
from dax_core.compile.cuda_graphs import disable_cuda_graphs, enable_cuda_graphs
from dax_core.models.spec import WanSpec
from dax_core.recipe import Recipe, RecipeError

SPEC = WanSpec(dim=512, num_layers=3, num_heads=4, ffn_dim=1024, text_dim=256)
FP8 = {"kind": "quantize"}
CUDNN = {"kind": "attention", "backend": "sdpa_cudnn"}
COMPILE = {"kind": "compile"}


def _model(accelerations: list[dict]):
    torch._dynamo.reset()
    model = build_model(SPEC, "cuda", torch.bfloat16, seed=0)
    recipe = Recipe.from_dict({"weights": "random", "accelerations": accelerations})
    apply_accelerations(model, recipe, BuildEnv(torch.device("cuda")))
    return model


def _inputs(seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(2, 16, 5, 16, 24, generator=g, device="cuda")
    ctx = torch.randn(2, 40, SPEC.text_dim, generator=g, device="cuda").bfloat16()
    return x, torch.tensor([900.0, 300.0], device="cuda") - seed, ctx


@pytest.mark.parametrize(
    "accelerations", [[], [FP8], [FP8, COMPILE], [FP8, CUDNN, COMPILE]], ids=["bf16", "fp8", "fp8-compile",
                                                                               "fp8-cudnn-compile"],
)  # fmt: skip
@torch.inference_mode()
def test_graph_replay_equals_eager_bit_for_bit(accelerations):
    if FP8 in accelerations and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 linears need compute capability 8.9+")
    if CUDNN in accelerations and "sdpa_cudnn" not in available_backends():
        pytest.skip("cuDNN SDPA is not available here")
    model = _model(accelerations)
    inputs = [_inputs(seed) for seed in range(3)]
    eager = [model(*i) for i in inputs]
    graphs = enable_cuda_graphs(model)
    replayed = [model(*i) for i in inputs]  # the first captures, the others replay with new inputs
    assert graphs.captures == 1
    for a, b in zip(eager, replayed, strict=True):
        assert torch.equal(a, b)
    disable_cuda_graphs(model)
    assert torch.equal(model(*inputs[0]), eager[0])


def test_sageattention2_cuda_kernels_are_refused():
    from dax_core.attention import sage

    if "sage" not in available_backends() or sage.flavour() != "cuda":
        pytest.skip("SageAttention2's CUDA kernels are not installed here")
    model = _model([{"kind": "attention", "backend": "sage"}])
    with pytest.raises(RecipeError, match="cannot record the self-attention kernel"):
        enable_cuda_graphs(model)
    assert model.block_graphs is None
