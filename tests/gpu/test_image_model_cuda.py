"""The I2V / FLF2V model on the GPU: bf16 against float64 on the CPU, and with the levers (8-bit linears with
DAX's fused input kernels, the compiled block, CUDA-graph replay) against its own bf16 eager forward.

Not yet run on a GPU: the bounds are those of the text-to-video tests of the same sizes (test_model_cuda,
test_quant_cuda, test_graph_replay_cuda), which the image cross-attention and embedding should not change."""

from __future__ import annotations

import pytest
import torch

from dax_core.accelerations import BuildEnv
from dax_core.compile import CompileConfig
from dax_core.compile.cuda_graphs import disable_cuda_graphs, enable_cuda_graphs
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanLinear, WanModel
from dax_core.quant import QuantLinear
from dax_core.quant.config import QuantizeConfig
from tests.numerics import rel_error
from tests.unit.tiny_wan import fill_checkpoint_like_

CLIP = 256
SPECS = {
    "i2v": WanSpec(dim=512, num_layers=3, num_heads=4, ffn_dim=1024, text_dim=256, in_dim=36, model_type="i2v",
                   clip_dim=CLIP),
    "flf2v": WanSpec(dim=512, num_layers=3, num_heads=4, ffn_dim=1024, text_dim=256, in_dim=36, model_type="flf2v",
                     clip_dim=CLIP, image_pos_tokens=514),
}  # fmt: skip


def _inputs(spec: WanSpec):
    g = torch.Generator().manual_seed(1)
    tokens = 514 if spec.model_type == "flf2v" else 257
    return (torch.randn(2, 36, 3, 12, 16, generator=g), torch.tensor([950.0, 40.0]),
            torch.randn(2, 20, spec.text_dim, generator=g), torch.randn(2, tokens, CLIP, generator=g))  # fmt: skip


@pytest.mark.parametrize("variant", sorted(SPECS))
def test_bf16_cuda_forward_tracks_float64(variant):
    spec = SPECS[variant]
    ref = fill_checkpoint_like_(WanModel(spec, dtype=torch.float64))
    fast = WanModel(spec, device="cuda", dtype=torch.bfloat16)
    fast.load_state_dict({k: v.to(fast.state_dict()[k].dtype) for k, v in ref.state_dict().items()})
    ref.patch_embedding.double()
    x, t, ctx, clip = _inputs(spec)
    with torch.no_grad():
        expected = ref(x.double(), t.double(), ctx.double(), clip_fea=clip.double())
        got = fast(x.cuda(), t.cuda(), ctx.cuda(), clip_fea=clip.cuda()).double().cpu()
    # bf16 weights and activations over 3 blocks and the image embedding: ~1e-2; a wrong kernel gives O(1)
    assert rel_error(got, expected) < 3e-2


@pytest.mark.parametrize("dtype", ["fp8", "int8"])
def test_levers_on_cuda_track_the_bf16_eager_forward(dtype):
    if dtype == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9+")
    spec = SPECS["i2v"]
    model = fill_checkpoint_like_(WanModel(spec, dtype=torch.bfloat16)).cuda()
    x, t, ctx, clip = (a.cuda() for a in _inputs(spec))
    with torch.no_grad():
        eager = model(x, t, ctx, clip_fea=clip).double()
        env = BuildEnv(torch.device("cuda"))
        QuantizeConfig(dtype=dtype).apply(model, env)  # with DAX's fused input kernels (the default)
        assert isinstance(model.blocks[0].cross_attn.k_img, QuantLinear)
        assert isinstance(model.img_emb.proj[1], WanLinear) and isinstance(model.img_emb.proj[3], WanLinear)
        quantized = model(x, t, ctx, clip_fea=clip).double()
        # 8-bit activations and weights per token / per channel over 3 blocks: a few 1e-2 at most
        assert rel_error(quantized, eager) < 6e-2
        torch._dynamo.reset()
        CompileConfig().apply(model, env)
        compiled = model(x, t, ctx, clip_fea=clip).double()
        # inductor fuses the bf16 element-wise work differently: a few bf16 roundings (2^-9) per block
        assert rel_error(compiled, quantized) < 1e-2
        torch._dynamo.reset()


@torch.inference_mode()
def test_cuda_graph_replay_of_the_image_model_equals_eager_bit_for_bit():
    spec = SPECS["flf2v"]
    model = fill_checkpoint_like_(WanModel(spec, dtype=torch.bfloat16)).cuda()
    x, t, ctx, clip = (a.cuda() for a in _inputs(spec))
    others = [clip, torch.flip(clip, dims=[1]), clip * 0.5]
    eager = [model(x, t, ctx, clip_fea=c) for c in others]
    graphs = enable_cuda_graphs(model)
    replayed = [model(x, t, ctx, clip_fea=c) for c in others]  # the first captures, the others replay new tokens
    disable_cuda_graphs(model)
    assert graphs.captures == 1
    for a, b in zip(eager, replayed, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(eager[0], eager[1])  # the image tokens change the output
