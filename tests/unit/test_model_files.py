"""Which Wan weights the Load Wan DAX node lists, from ComfyUI's model folders (``folder_paths`` stood in for)."""

from __future__ import annotations

import sys
import types

import pytest

from tests.unit.node_modules import node_module


@pytest.fixture
def model_files(tmp_path, monkeypatch):
    files_root, diffusers_root = tmp_path / "diffusion_models", tmp_path / "diffusers"
    files_root.mkdir()
    diffusers_root.mkdir()
    (files_root / "wan2.1_t2v_14B_fp8.safetensors").write_bytes(b"")
    (files_root / "notes.txt").write_bytes(b"")
    (diffusers_root / "put_diffusers_models_here").write_bytes(b"")  # as a fresh ComfyUI ships it
    (diffusers_root / "Wan2.1-T2V-1.3B-Diffusers" / "transformer").mkdir(parents=True)
    (diffusers_root / "wan-sharded").mkdir()
    (diffusers_root / "wan-sharded" / "diffusion_pytorch_model.safetensors.index.json").write_text("{}")
    (diffusers_root / "some-vae").mkdir()
    roots = {"diffusion_models": [str(files_root)], "diffusers": [str(diffusers_root)]}
    fake = types.ModuleType("folder_paths")
    fake.get_folder_paths = lambda kind: roots[kind]
    fake.get_filename_list = lambda kind: sorted(p.name for p in files_root.iterdir())
    fake.get_full_path = lambda kind, name: str(files_root / name) if (files_root / name).exists() else None
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    return node_module("model_files"), diffusers_root


def test_lists_weight_files_and_model_folders_past_comfyuis_placeholder_file(model_files):
    module, _ = model_files
    assert module.list_models() == [
        "wan2.1_t2v_14B_fp8.safetensors",
        "Wan2.1-T2V-1.3B-Diffusers (diffusers)",
        "wan-sharded (diffusers)",
    ]


def test_resolves_listed_names_and_names_the_folders_for_a_missing_one(model_files):
    module, diffusers_root = model_files
    assert module.resolve_model("wan-sharded (diffusers)") == str(diffusers_root / "wan-sharded")
    assert module.resolve_model("wan2.1_t2v_14B_fp8.safetensors").endswith("wan2.1_t2v_14B_fp8.safetensors")
    with pytest.raises(FileNotFoundError, match=r"put the Wan2\.1 T2V \.safetensors there"):
        module.resolve_model("gone.safetensors")
    with pytest.raises(FileNotFoundError, match="diffusers folder 'some-vae' not found"):
        module.resolve_model("some-vae (diffusers)")
