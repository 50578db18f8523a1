"""Wan2.2 TI2V (48 latent channels, per-token timesteps) against ComfyUI's native WanModel and diffusers'
WanTransformer3DModel on the same random weights, and its detection from files in every naming.

Tolerance, for every comparison: float32 on both sides with the same weights; the implementations differ only in
the order of float32 operations (the rotary tables and the sinusoidal embedding are built through other float
paths, LayerNorm and the modulation are fused differently), each worth a few float32 ulps (6e-8 relative) per
operation; through two blocks of normalised activations that stays at ~1e-6 (the Wan2.1 parity tests see the same),
below the 1e-5 bound. A wrong per-token modulation (every token given the first frame's t = 0, or the frames' times
repeated in the wrong order) moves the output by tens of percent.
"""

from __future__ import annotations

import pytest
import torch

from dax_core.models.detect import infer_spec
from dax_core.models.loading import inspect_weights, load_wan_model
from dax_core.models.naming import wan_to_diffusers
from dax_core.models.spec import PRESETS, WAN21_T2V_14B, WAN22_TI2V_5B, WanSpec
from dax_core.models.tiny import random_state_dict, write_tiny_model
from dax_core.models.wan import WanModel, timesteps_of
from tests.numerics import rel_error

SPEC = WanSpec(dim=96, num_layers=2, num_heads=4, ffn_dim=192, text_dim=64, freq_dim=32, in_dim=48, out_dim=48,
               model_type="ti2v")  # fmt: skip
REL = 1e-5  # see the module docstring
FRAMES, H, W = 5, 6, 10  # odd patch grid: 5 x 3 x 5


def _ours(state: dict[str, torch.Tensor]) -> WanModel:
    model = WanModel(SPEC, dtype=torch.float32)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _inputs(seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 48, FRAMES, H, W, generator=g), torch.randn(batch, 7, SPEC.text_dim, generator=g)


def _first_frame_given(t: list[float]) -> torch.Tensor:
    """Per-frame timesteps as ComfyUI's WAN22 makes them from Wan22ImageToVideoLatent's mask: 0 on frame 0."""
    return torch.tensor([[0.0] + [v] * (FRAMES - 1) for v in t])


@pytest.fixture(scope="module")
def native(comfyui_importable):
    import comfy.ldm.wan.model
    import comfy.ops

    state = random_state_dict(SPEC, seed=4)
    ref = comfy.ldm.wan.model.WanModel(
        model_type="t2v", in_dim=48, out_dim=48, dim=SPEC.dim, ffn_dim=SPEC.ffn_dim, freq_dim=SPEC.freq_dim,
        text_dim=SPEC.text_dim, num_heads=SPEC.num_heads, num_layers=SPEC.num_layers, dtype=torch.float32,
        operations=comfy.ops.disable_weight_init,
    ).eval()  # fmt: skip
    ref.load_state_dict(state, strict=True)
    return ref, _ours(state)


@pytest.mark.parametrize(
    "t",
    [
        torch.tensor([900.0, 250.0]),  # one per batch row: text-to-video
        _first_frame_given([900.0, 250.0]),  # per frame, the given first frame at t = 0
        torch.tensor([[0.0, 700.0, 500.0, 300.0, 999.0], [10.0, 20.0, 30.0, 40.0, 50.0]]),  # any per-frame values
    ],
    ids=["per-row", "first-frame-given", "per-frame"],
)
def test_matches_comfyui_native_wan_model(native, t):
    ref, ours = native
    x, ctx = _inputs(5)
    with torch.no_grad():
        expected = ref(x, t, ctx)
        got = ours(x, t, ctx)
    assert got.shape == expected.shape == x.shape
    assert rel_error(got, expected) <= REL


def test_per_token_timesteps_match_native(native):
    ref, ours = native
    x, ctx = _inputs(6)
    tokens = FRAMES * (H // 2) * (W // 2)
    t = torch.rand(2, tokens, generator=torch.Generator().manual_seed(1)) * 1000
    with torch.no_grad():
        assert rel_error(ours(x, t, ctx), ref(x, t, ctx)) <= REL


def test_the_first_frames_timestep_matters(native):
    # the test above could not fail if per-frame timesteps were collapsed to one: show they are not
    _, ours = native
    x, ctx = _inputs(7)
    with torch.no_grad():
        given = ours(x, _first_frame_given([900.0, 250.0]), ctx)
        uniform = ours(x, torch.tensor([900.0, 250.0]), ctx)
        equal_frames = ours(x, torch.tensor([[900.0] * FRAMES, [250.0] * FRAMES]), ctx)
    assert rel_error(given, uniform) > 0.05
    assert rel_error(equal_frames, uniform) <= REL  # a per-frame t that is the same everywhere is the per-row t


def test_matches_diffusers_with_per_token_timesteps():
    import diffusers

    state = random_state_dict(SPEC, seed=8)
    ref = diffusers.WanTransformer3DModel(
        num_attention_heads=SPEC.num_heads, attention_head_dim=SPEC.head_dim, in_channels=48, out_channels=48,
        text_dim=SPEC.text_dim, freq_dim=SPEC.freq_dim, ffn_dim=SPEC.ffn_dim, num_layers=SPEC.num_layers,
    ).eval()  # fmt: skip
    ref.load_state_dict({wan_to_diffusers(k): v for k, v in state.items()}, strict=True)
    x, ctx = _inputs(9)
    per_frame = _first_frame_given([900.0, 250.0])
    tokens_per_frame = (H // 2) * (W // 2)
    with torch.no_grad():
        got = _ours(state)(x, per_frame, ctx)
        expected = ref(x, per_frame.repeat_interleave(tokens_per_frame, dim=1), ctx, return_dict=False)[0]
    assert rel_error(got, expected) <= REL


@pytest.mark.parametrize(
    ("shape", "message"),
    [((3,), r"3 timesteps for a batch of 2"), ((2, 4), r"give \[2\], \[2, 5\] \(per frame\) or \[2, 75\]")],
)
def test_timesteps_of_a_wrong_shape_say_what_fits(shape, message):
    with pytest.raises(ValueError, match=message):
        timesteps_of(torch.zeros(shape), 2, (1, 2, 2), (FRAMES, H, W))


def test_ti2v_5b_preset_is_the_official_configuration():
    # wan/configs/wan_ti2v_5B.py: dim 3072, ffn 14336, 30 layers, 24 heads; the VAE's 48 channels in and out
    spec = PRESETS["wan2.2-ti2v-5b"]
    assert (spec.dim, spec.ffn_dim, spec.num_layers, spec.num_heads) == (3072, 14336, 30, 24)
    assert (spec.in_dim, spec.out_dim, spec.patch_size, spec.model_type) == (48, 48, (1, 2, 2), "ti2v")
    assert spec.per_token_timesteps and spec.vae_spatial_stride == 16
    assert round(spec.parameter_count() / 1e9, 2) == 5.0
    assert spec.parameter_count() == sum(p.numel() for p in WanModel(spec, device="meta").parameters())
    shapes = {k: tuple(v.shape) for k, v in WanModel(spec, device="meta").state_dict().items()}
    assert infer_spec(shapes, where="x") == WAN22_TI2V_5B
    assert infer_spec(shapes, where="x").name == "wan2.2-ti2v-5b"


def test_model_type_is_validated_with_the_choices():
    with pytest.raises(ValueError, match="model_type 'tiv' is not one of t2v, i2v, flf2v, ti2v"):
        WanSpec(dim=64, num_layers=1, num_heads=4, ffn_dim=64, model_type="tiv")
    assert WanSpec.from_dict(SPEC.to_dict()) == SPEC
    legacy = {k: v for k, v in WAN21_T2V_14B.to_dict().items() if k != "model_type"}
    assert WanSpec.from_dict(legacy) == WAN21_T2V_14B  # a recipe written before the field is Wan2.1 T2V


def test_a_16_channel_latent_for_a_48_channel_model_names_the_wan22_latent():
    with pytest.raises(ValueError, match=r"\[B, 48, frames, height, width\].*Wan22ImageToVideoLatent"):
        SPEC.check_latent((1, 16, 3, 6, 10))
    with pytest.raises(ValueError, match="height 48 is not a multiple of 32: use 32 or 64"):
        SPEC.check_latent((1, 48, 3, 3, 10))  # pixels of the Wan2.2 VAE: 16 per latent cell


NAMINGS = [("wan", False), ("comfy", False), ("diffusers", False), ("diffusers", True)]


@pytest.mark.parametrize(("naming", "sharded"), NAMINGS)
def test_ti2v_files_are_detected_in_every_naming(tmp_path, naming, sharded):
    path = write_tiny_model(
        tmp_path / ("model" if sharded else "model.safetensors"), naming=naming, sharded=sharded, variant="ti2v",
        dtype="fp32", seed=2,
    )  # fmt: skip
    info = inspect_weights(path)
    assert info.spec.model_type == "ti2v" and info.spec.in_dim == info.spec.out_dim == 48
    model = load_wan_model(path, device="cpu", compute_dtype=torch.float32)
    x = torch.randn(1, 48, 2, 4, 4)
    out = model(x, torch.tensor([[0.0, 500.0]]), torch.randn(1, 3, info.spec.text_dim))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_a_16_channel_file_is_text_to_video():
    assert (
        infer_spec(
            {k: tuple(v.shape) for k, v in WanModel(WAN21_T2V_14B, device="meta").state_dict().items()}, where="x"
        ).model_type
        == "t2v"
    )


def test_compiled_blocks_take_per_frame_timesteps_in_one_graph(native, fresh_dynamo):
    # the blocks trace the grouped modulation as they run it eagerly (fullgraph: no break at the token groups), and
    # other timestep values reuse the graph (one graph for every block and call)
    from dax_core.compile import CompileConfig
    from dax_core.compile.regional import compile_blocks, uncompile_blocks
    from tests.unit.test_compile import CountingBackend

    _, ours = native
    x, ctx = _inputs(10)
    given = _first_frame_given([900.0, 250.0])
    with torch.no_grad():
        eager = ours(x, given, ctx)
        backend = CountingBackend()
        compile_blocks(ours, CompileConfig(backend="aot_eager"), backend=backend)
        try:
            compiled = ours(x, given, ctx)
            ours(x, _first_frame_given([500.0, 100.0]), ctx)
        finally:
            uncompile_blocks(ours)
    assert backend.graphs == 1
    assert rel_error(compiled, eager) <= REL
