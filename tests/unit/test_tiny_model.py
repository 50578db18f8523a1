"""The tiny-model generator: random weights with sane scales, every naming / dtype / layout, and its CLI."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dax_core.models.loading import load_wan_model
from dax_core.models.spec import WanSpec
from dax_core.models.tiny import main, random_state_dict, stored_state_dict, write_state_dict, write_tiny_model
from dax_core.models.wan import WanModel
from dax_core.models.weight_conversion import is_block_linear_weight
from tests.environment import REPO

SPEC = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=768, freq_dim=256)


def _keys_and_metadata(path: Path) -> tuple[set[str], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys()), f.metadata()


def test_random_state_dict_has_every_parameter_in_float32_and_is_seeded():
    sd = random_state_dict(SPEC, seed=1)
    expected = {name: p.shape for name, p in WanModel(SPEC, device="meta").state_dict().items()}
    assert {name: t.shape for name, t in sd.items()} == expected
    assert all(t.dtype == torch.float32 for t in sd.values())
    again, other = random_state_dict(SPEC, seed=1), random_state_dict(SPEC, seed=2)
    assert all(torch.equal(sd[name], again[name]) for name in sd)
    assert not torch.equal(sd["blocks.0.ffn.0.weight"], other["blocks.0.ffn.0.weight"])


def test_random_weights_have_trained_model_scales():
    spec = WanSpec(dim=256, num_layers=1, num_heads=2, ffn_dim=1024, text_dim=512, freq_dim=256)
    sd = random_state_dict(spec)
    # The std of n Gaussian draws is off by ~1/sqrt(2n) relative: 0.14% for ffn.2's 262k weights, 0.28% for q's 65k,
    # 0.55% for patch_embedding's 16k, 1.8% for the modulation's 1.5k, so 5% (10%) fails only for a wrong scale (a
    # factor sqrt 2 is 41%). The norm weights are 1 + 0.1 N(0, 1) over 256 entries: their mean is within 0.03 (4.8
    # standard errors) of 1 and their std within 20% (4.5 standard errors of 4.4%) of 0.1; the biases are
    # 0.02 N(0, 1) over 1024 entries, whose largest (~3.3 sigma, 0.066) stays below 0.1 (5 sigma).
    assert sd["blocks.0.ffn.2.weight"].std().item() == pytest.approx(1 / math.sqrt(1024), rel=0.05)
    assert sd["blocks.0.self_attn.q.weight"].std().item() == pytest.approx(1 / math.sqrt(256), rel=0.05)
    assert sd["patch_embedding.weight"].std().item() == pytest.approx(1 / math.sqrt(16 * 4), rel=0.05)
    assert sd["blocks.0.modulation"].std().item() == pytest.approx(1 / math.sqrt(256), rel=0.1)
    assert sd["blocks.0.norm3.weight"].mean().item() == pytest.approx(1.0, abs=0.03)
    assert sd["blocks.0.self_attn.norm_q.weight"].std().item() == pytest.approx(0.1, rel=0.2)
    assert sd["blocks.0.ffn.0.bias"].abs().max().item() < 0.1


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_forward_of_a_tiny_model_is_finite_and_not_degenerate(tmp_path, compute_dtype):
    path = write_tiny_model(tmp_path / "m.safetensors")
    model = load_wan_model(path, device="cpu", compute_dtype=compute_dtype)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 16, 3, 8, 8, generator=g), torch.randn(2, 9, 768, generator=g)
    with torch.no_grad():
        out = model(x, torch.tensor([999.0, 10.0]), ctx)
    assert out.shape == x.shape and out.dtype == compute_dtype
    assert torch.isfinite(out).all()
    assert 0.1 < out.float().std().item() < 10


def test_fp8_files_store_block_linears_in_float8_and_the_rest_in_bf16():
    sd = random_state_dict(SPEC)
    plain = stored_state_dict(sd, "fp8_e4m3fn")
    assert set(plain) == set(sd)
    for name, t in plain.items():
        assert t.dtype == (torch.float8_e4m3fn if is_block_linear_weight(name) else torch.bfloat16), name
    scaled = stored_state_dict(sd, "fp8_scaled")
    scales = {name for name in scaled if name.endswith(".scale_weight")}
    assert scales == {n.removesuffix(".weight") + ".scale_weight" for n in sd if is_block_linear_weight(n)}
    assert scaled["scaled_fp8"].dtype == torch.float8_e4m3fn and scaled["scaled_fp8"].numel() == 0
    w, q = sd["blocks.1.ffn.0.weight"], scaled["blocks.1.ffn.0.weight"]
    scale = scaled["blocks.1.ffn.0.scale_weight"]
    assert scale.shape == () and scale.dtype == torch.float32
    assert scale.item() == pytest.approx(w.abs().max().item() / 448, rel=1e-6)
    # e4m3: 3 mantissa bits, so rounding moves a value by at most 2^-4 of itself (2^-10 * scale when subnormal)
    assert ((q.float() * scale - w).abs() <= w.abs() / 16 + scale / 1024).all()


@pytest.mark.parametrize(
    ("naming", "sample_key"),
    [
        ("wan", "blocks.0.self_attn.q.weight"),
        ("comfy", "model.diffusion_model.blocks.0.self_attn.q.weight"),
        ("diffusers", "blocks.0.attn1.to_q.weight"),
    ],
)
def test_single_files_use_the_naming_and_record_the_head_count(tmp_path, naming, sample_key):
    path = write_tiny_model(tmp_path / "m.safetensors", naming=naming, num_heads=2, dtype="fp8_scaled")
    keys, metadata = _keys_and_metadata(path)
    assert sample_key in keys
    assert sample_key.replace(".weight", ".scale_weight") in keys
    assert len(keys) == len(WanModel(SPEC, device="meta").state_dict()) + 2 * 10 + 1  # scale per block linear, marker
    assert metadata == {"dax.num_heads": "2"}


def test_sharded_diffusers_folder_has_index_two_shards_and_config(tmp_path):
    folder = write_tiny_model(tmp_path / "transformer", naming="diffusers", sharded=True)
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert shards == [f"diffusion_pytorch_model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    by_shard = {name: _keys_and_metadata(folder / name)[0] for name in shards}
    assert all(by_shard.values())
    assert index["weight_map"] == {key: name for name, keys in by_shard.items() for key in keys}
    total = sum(t.numel() * t.element_size() for t in stored_state_dict(random_state_dict(SPEC), "bf16").values())
    assert index["metadata"]["total_size"] == total
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "WanTransformer3DModel"
    assert (config["num_attention_heads"], config["attention_head_dim"], config["num_layers"]) == (4, 16, 2)


def test_write_state_dict_rejects_bad_arguments(tmp_path):
    sd = random_state_dict(SPEC)
    with pytest.raises(ValueError, match="naming='diffusers'"):
        write_state_dict(sd, tmp_path / "x", naming="wan", sharded=True)
    with pytest.raises(ValueError, match="naming 'ldm'"):
        write_state_dict(sd, tmp_path / "x.safetensors", naming="ldm")
    with pytest.raises(ValueError, match="dtype 'int8'"):
        stored_state_dict(sd, "int8")


def test_cli_writes_the_model_and_logs_it(tmp_path, caplog):
    out = tmp_path / "cli.safetensors"
    argv = ["--out", str(out), "--dim", "128", "--layers", "3", "--heads", "2", "--ffn", "256", "--text-dim", "64"]
    with caplog.at_level(logging.INFO, logger="dax_core.models.tiny"):
        assert main([*argv, "--naming", "comfy", "--dtype", "fp16", "--seed", "5"]) == 0
    assert f"wrote {out}" in caplog.text and "comfy naming" in caplog.text
    model = load_wan_model(out, device="cpu", compute_dtype=torch.float32)
    assert model.spec == WanSpec(dim=128, num_layers=3, num_heads=2, ffn_dim=256, text_dim=64)
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--dtype", "int4"])


def test_python_m_dax_core_tiny_model(tmp_path):
    out = tmp_path / "folder"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "dax_core", "tiny-model", "--out", str(out), "--naming", "diffusers", "--sharded"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stderr
    assert (out / "diffusion_pytorch_model.safetensors.index.json").is_file()
