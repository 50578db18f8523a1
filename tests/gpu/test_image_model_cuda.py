"""The I2V / FLF2V model on the GPU: bf16 against float64 on the CPU, every installed attention backend on the image
cross-attention against SDPA, and with the levers (8-bit linears with DAX's fused input kernels, the compiled block,
CUDA-graph replay) against its own bf16 eager forward.

The bounds are those of the text-to-video tests of the same sizes (test_model_cuda, test_quant_cuda,
test_graph_replay_cuda), which the image cross-attention and embedding should not change. All
passed on an H200 (flash-attn was not installed there: its cases skipped)."""

from __future__ import annotations

import pytest
import torch

from dax_core.accelerations import BuildEnv
from dax_core.attention import SDPA_DEFAULT, BackendUnavailable, available_backends
from dax_core.attention.config import AttentionConfig
from dax_core.compile import CompileConfig
from dax_core.compile.cuda_graphs import disable_cuda_graphs, enable_cuda_graphs
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanAttention, WanLinear, WanModel
from dax_core.quant import QuantLinear
from dax_core.quant.config import QuantizeConfig
from dax_core.recipe import RecipeError
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


# One image cross-attention layer (the text and 257 or 514 image tokens, Wan's D=128 heads) against float64: bf16
# kernels round P and the output once per attention (~3e-3 relative, test_attention_cuda's BF16_TOL 1e-2) and the
# projections once more; SageAttention's int8 Q.K and fp8 P.V, ~1e-2..5e-2 (test_attention_cuda's SAGE_TOL).
BACKEND_TOL = {"exact": 1.5e-2, "sage": 6e-2}
BACKEND_CONFIGS = [
    {"backend": "sdpa"}, {"backend": "sdpa_cudnn"}, {"backend": "sdpa_flash"}, {"backend": "flash"},
    {"backend": "sage"}, {"backend": "sage", "sage_inputs": "fused"}, {"backend": "auto"},
]  # fmt: skip


@pytest.mark.parametrize("image_tokens", [257, 514])
@pytest.mark.parametrize("config", BACKEND_CONFIGS, ids=lambda c: "-".join(c.values()))
@torch.inference_mode()
def test_every_attention_backend_runs_the_image_cross_attention(config, image_tokens):
    if config["backend"] not in available_backends():
        pytest.skip(f"{config['backend']} is not installed here")
    try:
        _, cross = AttentionConfig(**config).bind("cuda", torch.bfloat16)
    except (RecipeError, BackendUnavailable) as err:  # an option this GPU's kernels lack (fused Sage inputs off sm90)
        pytest.skip(str(err))
    dim, heads = 1024, 8
    g = torch.Generator().manual_seed(2)
    ref = WanAttention(dim, heads, 1e-6, image=True, dtype=torch.float64)
    for p in ref.parameters():
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * (dim**-0.5 if p.ndim == 2 else 1.0))
    x, ctx, image = (torch.randn(1, n, dim, generator=g, dtype=torch.float64) for n in (2000, 512, image_tokens))
    expected = ref.cross_attention(x, ctx, SDPA_DEFAULT, image)
    layer = WanAttention(dim, heads, 1e-6, image=True, device="cuda", dtype=torch.bfloat16)
    layer.load_state_dict(ref.state_dict())
    x16, ctx16, image16 = (a.cuda().bfloat16() for a in (x, ctx, image))
    got = layer.cross_attention(x16, ctx16, cross, image16)
    tol = BACKEND_TOL["sage" if "sage" in cross.kernel.lower() else "exact"]
    assert rel_error(got, expected) < tol, cross.kernel
    # the image tokens' share of the output is far above the bound: a kernel that dropped them would fail above
    assert rel_error(ref.cross_attention(x, ctx, SDPA_DEFAULT, None), expected) > 5 * tol


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
