"""Wan <-> diffusers parameter names, ComfyUI prefixes and naming detection."""

from __future__ import annotations

import pytest
import torch

from dax_core.models.loading import load_wan_model
from dax_core.models.naming import (
    detect_naming,
    diffusers_to_wan,
    strip_comfy_prefix,
    to_wan_name,
    wan_to_diffusers,
)
from dax_core.models.spec import WanSpec
from dax_core.models.tiny import diffusers_config, write_tiny_model
from dax_core.models.wan import WanModel

SPEC = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=96, freq_dim=32)
WAN_NAMES = list(WanModel(SPEC, device="meta").state_dict())


def test_every_wan_name_round_trips_through_diffusers_naming():
    diffusers_names = [wan_to_diffusers(name) for name in WAN_NAMES]
    assert len(set(diffusers_names)) == len(WAN_NAMES)
    assert [diffusers_to_wan(name) for name in diffusers_names] == WAN_NAMES
    assert wan_to_diffusers("blocks.1.norm3.weight") == "blocks.1.norm2.weight"
    assert wan_to_diffusers("head.modulation") == "scale_shift_table"
    assert wan_to_diffusers("blocks.0.modulation") == "blocks.0.scale_shift_table"
    assert diffusers_to_wan("blocks.3.ffn.net.0.proj.scale_weight") == "blocks.3.ffn.0.scale_weight"


def test_names_match_diffusers_wan_transformer_one_to_one_with_equal_shapes():
    import diffusers  # a test dependency: missing, it is a failure, not a skip

    config = {k: v for k, v in diffusers_config(SPEC).items() if not k.startswith("_")}
    with torch.device("meta"):
        reference = diffusers.WanTransformer3DModel(**config)
    theirs = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    ours = {wan_to_diffusers(name): tuple(t.shape) for name, t in WanModel(SPEC, device="meta").state_dict().items()}
    assert ours == theirs


def test_diffusers_named_file_loads_into_a_model_that_matches_diffusers_forward(tmp_path):
    import diffusers  # a test dependency: missing, it is a failure, not a skip
    from safetensors.torch import load_file

    spec = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=768, freq_dim=256)
    path = write_tiny_model(tmp_path / "d.safetensors", naming="diffusers", dtype="fp32", seed=3)
    ours = load_wan_model(path, device="cpu", compute_dtype=torch.float32)
    config = {k: v for k, v in diffusers_config(spec).items() if not k.startswith("_")}
    reference = diffusers.WanTransformer3DModel(**config).eval()
    reference.load_state_dict(load_file(str(path)), strict=True)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 7, 768, generator=g)
    t = torch.tensor([700.0])
    with torch.no_grad():
        expected = reference(x, t, ctx).sample
        got = ours(x, t, ctx)
    # float32 on both sides; the two differ only in rotary-embedding arithmetic (measured 2e-5 max abs)
    torch.testing.assert_close(got, expected, rtol=0, atol=2e-4)


def test_comfy_prefixes_are_stripped():
    assert strip_comfy_prefix("model.diffusion_model.blocks.0.ffn.0.weight") == "blocks.0.ffn.0.weight"
    assert strip_comfy_prefix("diffusion_model.head.modulation") == "head.modulation"
    assert strip_comfy_prefix("head.modulation") == "head.modulation"
    assert to_wan_name("model.diffusion_model.blocks.0.ffn.0.weight", "wan") == "blocks.0.ffn.0.weight"


def test_detect_naming():
    assert detect_naming(set(WAN_NAMES)) == "wan"
    assert detect_naming({wan_to_diffusers(name) for name in WAN_NAMES}) == "diffusers"
    assert detect_naming({strip_comfy_prefix("model.diffusion_model." + name) for name in WAN_NAMES}) == "wan"
    assert detect_naming({"encoder.conv1.weight", "decoder.conv1.weight"}) is None


def test_to_wan_name_maps_diffusers_and_rejects_unknown_names():
    assert to_wan_name("condition_embedder.time_proj.weight", "diffusers") == "time_projection.1.weight"
    assert to_wan_name("blocks.0.attn2.to_out.0.bias", "diffusers") == "blocks.0.cross_attn.o.bias"
    assert to_wan_name("blocks.0.attn2.add_k_proj.weight", "diffusers") == "blocks.0.cross_attn.k_img.weight"
    assert to_wan_name("condition_embedder.image_embedder.pos_embed", "diffusers") == "img_emb.emb_pos"
    assert to_wan_name("blocks.0.attn2.add_q_proj.weight", "diffusers") is None
    assert to_wan_name("rope.freqs", "diffusers") is None
    with pytest.raises(ValueError, match="unknown naming"):
        to_wan_name("head.modulation", "comfy")
