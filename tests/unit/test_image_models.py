"""The I2V and FLF2V DiTs against ComfyUI's native WanModel (and diffusers' I2V transformer) on the same random
weights, float32, at odd sizes with short text and image contexts.

Tolerance 1e-5 relative, for every comparison: float32 on both sides. The largest rounding is the references' time
embedding: they take the sinusoid of t * f in float32 (ours in float64), whose angle is off by up to t * 2^-24 rad,
3e-5 at t = 400; the modulation carries that into the output at ~5e-3 of its size, plus each op's own 2^-24 ~ 6e-8
through the two blocks: observed 1.8e-6 (I2V) and 2.0e-6 (FLF2V) at t = 400 and 60, 4.6e-6 at t = 900 (scaling with
t as the argument says), 7.7e-6 against diffusers' I2V at t = 900. Leaving out the image attention, its RMSNorm, the
image embedding's norms or FLF2V's positional embedding moves the output by 1e-2 or more (the test asserts that
other image features move it by more than 1e3 times the tolerance).
"""

from __future__ import annotations

import pytest
import torch

from dax_core.models.naming import diffusers_to_wan, wan_to_diffusers
from dax_core.models.spec import WanSpec
from dax_core.models.wan import WanModel
from tests.numerics import rel_error

CLIP = 40  # a short CLIP width: the real one is 1280
I2V = WanSpec(dim=96, num_layers=2, num_heads=4, ffn_dim=192, text_dim=64, freq_dim=32, in_dim=36, model_type="i2v",
              clip_dim=CLIP)  # fmt: skip
FLF2V = WanSpec(dim=96, num_layers=2, num_heads=4, ffn_dim=192, text_dim=64, freq_dim=32, in_dim=36,
                model_type="flf2v", clip_dim=CLIP, image_pos_tokens=10)  # fmt: skip
TOL = 1e-5  # see the module docstring


def _random_state(spec: WanSpec, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = WanModel(spec, device="meta", dtype=torch.float32)
    return {k: torch.randn(v.shape, generator=g) * 0.2 + (1.0 if "norm" in k else 0.0)
            for k, v in model.state_dict().items()}  # fmt: skip


def _inputs(spec: WanSpec, seed: int, image_tokens: int, text_tokens: int = 7, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, spec.in_dim, 3, 6, 10, generator=g)  # odd frames, 3 x 5 patches
    t = torch.tensor([400.0, 60.0][:batch])  # see the module docstring
    ctx = torch.randn(batch, text_tokens, spec.text_dim, generator=g)
    clip = torch.randn(batch, image_tokens, spec.clip_dim, generator=g)
    return x, t, ctx, clip


def _ours(spec: WanSpec, state: dict[str, torch.Tensor]) -> WanModel:
    model = WanModel(spec, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def comfy_wan(comfyui_importable):
    import comfy.ldm.wan.model
    import comfy.ops

    return comfy.ldm.wan.model, comfy.ops


def _native(wan_mod, ops, spec: WanSpec, state: dict[str, torch.Tensor], clip_dim: int):
    ref = wan_mod.WanModel(
        model_type="i2v",
        in_dim=spec.in_dim,
        dim=spec.dim,
        ffn_dim=spec.ffn_dim,
        freq_dim=spec.freq_dim,
        text_dim=spec.text_dim,
        num_heads=spec.num_heads,
        num_layers=spec.num_layers,
        flf_pos_embed_token_number=spec.image_pos_tokens or None,
        dtype=torch.float32,
        operations=ops.disable_weight_init,
    ).eval()
    if clip_dim != 1280:  # ComfyUI fixes the CLIP width at 1280: a narrower image embedding of the same kind
        ref.img_emb = wan_mod.MLPProj(clip_dim, spec.dim, spec.image_pos_tokens or None,
                                      operation_settings={"operations": ops.disable_weight_init,
                                                          "dtype": torch.float32})  # fmt: skip
    ref.load_state_dict(state, strict=True)
    return ref


@pytest.mark.parametrize(("spec", "image_tokens"), [(I2V, 5), (I2V, 1), (FLF2V, 10), (FLF2V, 7)])
def test_matches_comfyui_native_wan_model(comfy_wan, spec, image_tokens):
    """FLF2V with 7 tokens: fewer than its 10 positions (one image, or a short encoder), the positions cut to fit."""
    wan_mod, ops = comfy_wan
    state = _random_state(spec, 2)
    ref = _native(wan_mod, ops, spec, state, CLIP)
    x, t, ctx, clip = _inputs(spec, 3, image_tokens)
    with torch.no_grad():
        ours = _ours(spec, state)(x, t, ctx, clip_fea=clip)
        theirs = ref(x, t, ctx, clip_fea=clip)
    assert ours.shape == (2, 16, 3, 6, 10)
    assert rel_error(ours, theirs) <= TOL
    with torch.no_grad():  # the image tokens matter: other features move the output far beyond the tolerance
        other = ref(x, t, ctx, clip_fea=torch.randn(clip.shape, generator=torch.Generator().manual_seed(9)))
    assert rel_error(other, theirs) > 1e3 * TOL


def test_one_row_of_features_serves_every_sample():
    state = _random_state(I2V, 4)
    x, t, ctx, clip = _inputs(I2V, 5, 5)
    model = _ours(I2V, state)
    with torch.no_grad():
        shared = model(x, t, ctx, clip_fea=clip[:1])
        repeated = model(x, t, ctx, clip_fea=clip[:1].expand(2, -1, -1))
        other = model(x, t, ctx, clip_fea=clip[1:2])
    # the same float32 function: one row embedded and broadcast, or each row embedded, differ only by the GEMMs'
    # blocking over 5 or 10 rows (2.7e-7 measured on an AVX2 CPU; bit for bit on some others); another image's
    # features move the output by 5e-2
    assert rel_error(repeated, shared) < 1e-5
    assert rel_error(other, shared) > 1e-2


def test_matches_diffusers_i2v_transformer():
    import diffusers  # a test dependency: missing, it is a failure, not a skip

    state = _random_state(I2V, 0)
    ref = diffusers.WanTransformer3DModel(
        num_attention_heads=I2V.num_heads,
        attention_head_dim=I2V.head_dim,
        in_channels=I2V.in_dim,
        text_dim=I2V.text_dim,
        freq_dim=I2V.freq_dim,
        ffn_dim=I2V.ffn_dim,
        num_layers=I2V.num_layers,
        image_dim=I2V.clip_dim,
        added_kv_proj_dim=I2V.dim,
    ).eval()
    ref.load_state_dict({wan_to_diffusers(k): v for k, v in state.items()}, strict=True)
    # diffusers takes the image tokens as whatever precedes the last 512 context tokens: the text is 512 long there
    x, t, ctx, clip = _inputs(I2V, 1, 5, text_tokens=512)
    with torch.no_grad():
        ours = _ours(I2V, state)(x, t, ctx, clip_fea=clip)
        theirs = ref(x, t, ctx, encoder_hidden_states_image=clip, return_dict=False)[0]
    assert rel_error(ours, theirs) <= TOL


@pytest.mark.parametrize("spec", [I2V, FLF2V])
def test_diffusers_names_round_trip(spec):
    names = list(WanModel(spec, device="meta").state_dict())
    assert any("k_img" in n for n in names) and any(n.startswith("img_emb.") for n in names)
    assert [diffusers_to_wan(wan_to_diffusers(n)) for n in names] == names


@pytest.mark.parametrize("spec", [I2V, FLF2V])
def test_parameter_count_counts_the_image_modules(spec):
    assert spec.parameter_count() == sum(p.numel() for p in WanModel(spec, device="meta").parameters())


def test_the_published_image_presets_have_their_parameter_counts():
    # Wan2.1 I2V 14B: 16.39 B parameters (the released checkpoints' shapes); FLF2V adds 514 x 1280 positions
    from dax_core.models.spec import WAN21_FLF2V_14B, WAN21_I2V_14B

    assert WAN21_I2V_14B.parameter_count() == sum(
        p.numel() for p in WanModel(WAN21_I2V_14B, device="meta").parameters()
    )
    assert WAN21_FLF2V_14B.parameter_count() - WAN21_I2V_14B.parameter_count() == 514 * 1280


@pytest.mark.parametrize(
    ("spec", "clip", "message"),
    [
        (I2V, None, "needs the CLIP-vision features"),
        (I2V, torch.randn(2, 5, CLIP + 1), f"tokens, {CLIP}]"),
        (I2V, torch.randn(3, 5, CLIP), "2 or 1, tokens"),
    ],
)
def test_image_features_that_do_not_fit_say_what_to_connect(spec, clip, message):
    model = _ours(spec, _random_state(spec, 0))
    x, t, ctx, _ = _inputs(spec, 0, 5)
    with pytest.raises(ValueError, match=message):
        model(x, t, ctx, clip_fea=clip)


def test_a_text_to_video_model_refuses_image_features():
    spec = WanSpec(dim=96, num_layers=1, num_heads=4, ffn_dim=192, text_dim=64, freq_dim=32)
    model = WanModel(spec, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 16, 1, 2, 2, generator=g), torch.randn(1, 3, 64, generator=g)
    with pytest.raises(ValueError, match="no image cross-attention"):
        model(x, torch.tensor([500.0]), ctx, clip_fea=torch.randn(1, 5, 1280))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_type": "i2v", "in_dim": 16}, "in_dim 16"),
        ({"model_type": "flf2v", "in_dim": 36}, "image_pos_tokens 0"),
        ({"model_type": "t2v", "image_pos_tokens": 514}, "image_pos_tokens 514"),
        ({"model_type": "vace"}, "model_type 'vace' is not one of t2v, i2v, flf2v, ti2v"),
    ],
)
def test_spec_refuses_inconsistent_variants(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WanSpec(dim=96, num_layers=1, num_heads=4, ffn_dim=192, **kwargs)
