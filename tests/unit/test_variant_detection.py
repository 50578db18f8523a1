"""Every variant DAX runs is told from its tensors in original, ComfyUI and diffusers naming, and loads; the Wan
variants it does not run are refused by name, saying what it runs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from dax_core.models.info import ModelInfo
from dax_core.models.loading import WeightsError, inspect_weights, load_wan_model
from dax_core.models.tiny import VARIANTS, random_state_dict, tiny_spec, write_tiny_model
from dax_core.models.wan import WanModel
from tests.numerics import rel_error

CLIP = 32  # short CLIP features keep the files small
KINDS = [(variant, CLIP) for variant in VARIANTS] + [("i2v", 0)]  # clip 0: image-to-video without CLIP (Wan2.2 A14B)


@pytest.mark.parametrize(("variant", "clip_dim"), KINDS)
@pytest.mark.parametrize(
    ("naming", "prefix", "sharded"),
    [("wan", "", False), ("comfy", "model.diffusion_model.", False), ("comfy", "diffusion_model.", False),
     ("diffusers", "", False), ("diffusers", "", True)],
)  # fmt: skip
def test_each_variant_is_told_in_each_naming_and_loads(tmp_path, variant, clip_dim, naming, prefix, sharded):
    path = write_tiny_model(tmp_path / "m", variant=variant, clip_dim=clip_dim, naming=naming, sharded=sharded)
    if prefix == "diffusion_model.":  # ComfyUI also saves under the shorter prefix
        tensors = load_file(path)
        save_file({k.replace("model.diffusion_model.", prefix): v for k, v in tensors.items()}, path,
                  metadata={"dax.num_heads": "4"})  # fmt: skip
    spec = tiny_spec(variant, clip_dim=clip_dim)
    info = inspect_weights(path)
    assert info.model == ModelInfo(spec, spec.name, "wan2.2" if variant == "ti2v" or clip_dim == 0 else "wan2.1")
    assert info.spec.model_type == variant and info.spec.takes_image_latent == (variant in ("i2v", "flf2v"))
    assert info.spec.takes_clip == (variant in ("i2v", "flf2v") and clip_dim > 0)
    loaded = load_wan_model(path, device="cpu", compute_dtype=torch.float32)
    reference = WanModel(spec, dtype=torch.float32)
    reference.load_state_dict({k: v.bfloat16().float() for k, v in random_state_dict(spec).items()})
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, spec.in_dim, 2, 4, 6, generator=g), torch.randn(1, 5, spec.text_dim, generator=g)
    clip = torch.randn(1, 7, CLIP, generator=g) if spec.takes_clip else None
    with torch.no_grad():
        got = loaded(x, torch.tensor([500.0]), ctx, clip_fea=clip)
        want = reference.eval()(x, torch.tensor([500.0]), ctx, clip_fea=clip)
    assert rel_error(got, want) == 0.0  # the same bf16-stored weights, the same float32 model


@pytest.mark.parametrize("variant", ["i2v", "flf2v"])
def test_the_image_cross_attention_is_stored_in_fp8_like_the_other_block_linears(tmp_path, variant):
    path = write_tiny_model(tmp_path / "m.safetensors", variant=variant, clip_dim=CLIP, dtype="fp8_scaled")
    tensors = load_file(path)
    assert tensors["blocks.0.cross_attn.k_img.weight"].dtype == torch.float8_e4m3fn
    assert "blocks.0.cross_attn.v_img.scale_weight" in tensors
    assert tensors["img_emb.proj.1.weight"].dtype == torch.bfloat16  # the image embedding is not a block linear
    assert inspect_weights(path).stored_dtype == "fp8_e4m3fn"


def test_the_published_image_presets_are_named_by_their_variant():
    from dax_core.models.detect import infer_spec
    from dax_core.models.spec import PRESETS

    for name in ("wan2.1-i2v-14b", "wan2.1-flf2v-14b", "wan2.2-i2v-a14b"):
        shapes = {k: tuple(v.shape) for k, v in WanModel(PRESETS[name], device="meta").state_dict().items()}
        spec = infer_spec(shapes, where=name)
        assert spec == PRESETS[name] and spec.name == name and ModelInfo.of(spec).variant == name


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("vace_patch_embedding.weight", "VACE"),
        ("control_adapter.conv.weight", "camera-control"),
        ("casual_audio_encoder.encoder.final_linear.weight", "speech-to-video (S2V)"),
        ("audio_proj.audio_proj_glob_1.layer.bias", "HuMo"),
        ("face_adapter.fuser_blocks.0.k_norm.weight", "Animate"),
    ],
)
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_other_wan_variants_are_refused_by_name_with_what_dax_runs(tmp_path, key, what, prefix):
    """An image-to-video model with the extra tensors (camera control and Animate are built on I2V) is refused too."""
    path = write_tiny_model(tmp_path / "m.safetensors", variant="i2v", clip_dim=CLIP)
    tensors = load_file(path)
    tensors[key] = torch.zeros(2)
    save_file({prefix + k: v for k, v in tensors.items()}, path, metadata={"dax.num_heads": "4"})
    with pytest.raises(WeightsError) as info:
        inspect_weights(path)
    message = str(info.value)
    assert what in message and "which DAX does not run" in message
    assert "image-to-video (I2V 14B, 480p and 720p) and first-last-frame (FLF2V 14B)" in message


def test_phantom_is_refused_by_its_file_name(tmp_path):
    path = write_tiny_model(tmp_path / "Phantom-Wan-1.3B.safetensors")
    with pytest.raises(WeightsError, match=r"Phantom \(subject-to-video\).*which DAX does not run"):
        inspect_weights(path)


def test_the_tiny_model_command_writes_each_variant(tmp_path):
    from dax_core.models.tiny import main

    for variant, clip in KINDS:
        path = tmp_path / f"{variant}-{clip}.safetensors"
        assert main(["--out", str(path), "--variant", variant, "--clip-dim", str(clip), "--naming", "comfy"]) == 0
        assert inspect_weights(path).spec == tiny_spec(variant, clip_dim=clip)


def test_an_image_to_video_file_without_clip_has_no_image_modules_and_is_wan22(tmp_path):
    """Wan2.2 I2V A14B's files: 36 input channels, no img_emb, no k_img / v_img (ComfyUI's WanModel with in_dim 36 and
    text-only cross-attention); diffusers' config has no image_dim (no image_embedder)."""
    import json

    spec = tiny_spec("i2v", clip_dim=0)
    names = set(WanModel(spec, device="meta").state_dict())
    assert not any("img" in n for n in names) and spec.in_dim == 36
    folder = write_tiny_model(tmp_path / "d", variant="i2v", clip_dim=0, naming="diffusers", sharded=True)
    config = json.loads((folder / "config.json").read_text())
    assert config["in_channels"] == 36 and config["image_dim"] is None and config["added_kv_proj_dim"] is None
    info = inspect_weights(folder)
    assert info.spec == spec and info.model.family == "wan2.2" and spec.name == "custom-i2v-noclip-d64-l2-h4"


def test_an_flf2v_spec_without_clip_is_refused():
    from dax_core.models.spec import WanSpec

    with pytest.raises(ValueError, match="flf2v model takes both frames' CLIP-vision features"):
        WanSpec(dim=64, num_layers=1, num_heads=4, ffn_dim=128, in_dim=36, model_type="flf2v", clip_dim=0,
                image_pos_tokens=514)  # fmt: skip
    with pytest.raises(ValueError, match="clip_dim must be an integer >= 0"):
        WanSpec(dim=64, num_layers=1, num_heads=4, ffn_dim=128, in_dim=36, model_type="i2v", clip_dim=-1)
