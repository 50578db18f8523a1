"""A LoRA that does not fit is refused from its header, naming the file and the first bad key; keys that match
nothing in an otherwise fitting LoRA are reported in the sampler's summary; the recipe entry and its fingerprint."""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest
import torch

from dax_core.lora import LoraError, lora_fingerprint, lora_ref, plan_lora
from dax_core.lora.tiny import in_format, random_lora
from dax_core.models.spec import WanSpec
from dax_core.recipe import LoraRef, Recipe, RecipeError
from dax_core.runtime.engine import SampleRequest, WanEngine
from tests.unit.lora_helpers import SPEC, lora_file, with_loras, write_base, write_lora
from tests.unit.node_modules import node_module

FLUX_KEYS = {
    "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight": (4, 3072),
    "diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight": (9216, 4),
    "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072),
    "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": (3072, 4),
}


def _lightx2v(tmp_path, **extra: torch.Tensor):
    components = random_lora(SPEC, rank=4)
    return write_lora(tmp_path / "lora.safetensors", {**in_format(components, "lightx2v"), **extra})


def test_a_flux_lora_matches_nothing_and_says_so(tmp_path):
    path = write_lora(tmp_path / "flux.safetensors", {k: torch.zeros(shape) for k, shape in FLUX_KEYS.items()})
    with pytest.raises(LoraError, match=r"flux.safetensors: none of its 4 tensors .* names a layer of a Wan2\.1 T2V"):
        plan_lora(path, SPEC)
    with pytest.raises(LoraError, match="another model family"):
        plan_lora(path, SPEC)


def test_unmatched_keys_of_a_fitting_lora_are_counted_with_examples_in_the_summary(tmp_path):
    i2v = {
        "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": torch.zeros(4, 64),
        "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": torch.zeros(64, 4),
        "diffusion_model.img_emb.proj.1.diff_b": torch.zeros(64),
    }
    path = _lightx2v(tmp_path, **i2v)
    plan = plan_lora(path, SPEC)
    assert plan.unmatched == tuple(sorted(i2v)) and len(plan.changes) == 69
    _, base = write_base(tmp_path)
    engine = WanEngine.build(with_loras(base, (path, 0.5), compute_dtype="fp32"), "cpu")
    g = torch.Generator().manual_seed(0)
    request = SampleRequest(torch.randn(1, 4, SPEC.text_dim, generator=g), None, torch.zeros(1, 16, 1, 4, 4), 0, 1, 1.0)
    (line,) = [line for line in engine.sample(request).summary_lines() if line.startswith("LoRA")]
    assert line.startswith("LoRA lora.safetensors at strength 0.5: 69 parameters changed; 3 key(s) match no layer")
    assert "diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight" in line


def test_a_lora_for_another_model_size_names_the_first_bad_key(tmp_path):
    bigger = WanSpec(dim=96, num_layers=2, num_heads=4, ffn_dim=128, text_dim=32, freq_dim=32)
    path = write_lora(tmp_path / "big.safetensors", in_format(random_lora(bigger, rank=4), "lightx2v"))
    with pytest.raises(LoraError) as refused:
        plan_lora(path, SPEC)
    message = str(refused.value)
    first = "diffusion_model.blocks.0.cross_attn.k.diff_b"  # the first key in sorted order
    assert f"big.safetensors: {first} has shape [96], but the model needs the shape of" in message
    assert "made for another model size" in message
    pairs_only = {k: v for k, v in in_format(random_lora(bigger, rank=4), "lightx2v").items() if "lora_" in k}
    with pytest.raises(LoraError, match=r"cross_attn\.k\.lora_up\.weight / \S+ has shape \[96, 4\] / \[4, 96\]"):
        plan_lora(write_lora(tmp_path / "pairs.safetensors", pairs_only), SPEC)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sd: sd.pop("diffusion_model.blocks.0.ffn.0.lora_down.weight"), "lora_up.weight has no down half"),
        (lambda sd: sd.update({"diffusion_model.blocks.0.self_attn.q.dora_scale": torch.ones(64, 1)}), "DoRA"),
        (lambda sd: sd.update({"lora_unet_blocks_1_ffn_2.hada_w1_a": torch.ones(64, 4)}), "LoHa"),
        (lambda sd: sd.update({"diffusion_model.head.head.diff": torch.ones(3, 3)}), "head.head.diff has shape"),
        (lambda sd: sd.update({"blocks.0.self_attn.q.diff": torch.ones(64, 64)}), "one layer under two names"),
        (lambda sd: sd.update({"diffusion_model.blocks.0.norm3.diff": torch.ones(64, dtype=torch.int32)}), "I32"),
        (lambda sd: sd.update({"diffusion_model.blocks.0.norm3.alpha": torch.tensor(1.0)}), "up and down are missing"),
    ],
    ids=["incomplete-pair", "dora", "loha", "diff-shape", "two-namings", "integer", "lone-alpha"],
)
def test_a_damaged_or_unsupported_lora_is_refused_with_the_key(tmp_path, change, message):
    tensors = in_format(random_lora(SPEC, rank=4), "lightx2v")
    change(tensors)
    with pytest.raises(LoraError, match=message):
        plan_lora(write_lora(tmp_path / "bad.safetensors", tensors), SPEC)


def test_not_a_safetensors_file_is_a_lora_error(tmp_path):
    path = tmp_path / "lora.pt"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(LoraError, match="PyTorch checkpoint"):
        lora_ref(path)


def test_recipe_carries_each_lora_and_its_fingerprint(tmp_path):
    components, path = lora_file(tmp_path, rank=4)
    ref = lora_ref(path, -0.5)
    recipe = Recipe("base.safetensors").with_loras((ref, lora_ref(path, 1.0)))
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    assert recipe.without_loras() == Recipe("base.safetensors")
    assert list(recipe.lineage())[1] == Recipe("base.safetensors")
    assert "loras" not in Recipe("base.safetensors").to_dict()  # recipes without LoRAs keep their dict
    fingerprints = {recipe.fingerprint(), recipe.with_loras((dataclasses.replace(ref, strength=0.5),)).fingerprint()}
    write_lora(path, in_format({k: v * 1.01 for k, v in components.items()}, "lightx2v"))  # retrained: same shapes
    assert lora_fingerprint(path) != ref.fingerprint
    fingerprints.add(Recipe("base.safetensors").with_loras((lora_ref(path, -0.5), lora_ref(path, 1.0))).fingerprint())
    assert len(fingerprints) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strength": float("nan")}, "finite number"),
        ({"strength": True}, "finite number"),
        ({"fingerprint": ""}, "lora_ref"),
        ({"path": ""}, "path of its .safetensors"),
    ],
)
def test_invalid_lora_entries_say_what_to_change(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        LoraRef(**{"path": "a.safetensors", "strength": 1.0, "fingerprint": "0123", **kwargs})


@pytest.fixture
def lora_node(monkeypatch, tmp_path):
    """nodes/lora.py with ComfyUI's ``folder_paths`` stood in for by a loras folder under ``tmp_path``."""
    folder = tmp_path / "loras"
    folder.mkdir()
    fake = types.ModuleType("folder_paths")
    fake.get_filename_list = lambda kind: sorted(p.name for p in folder.iterdir())
    fake.get_full_path = lambda kind, name: str(folder / name) if (folder / name).is_file() else None
    fake.get_folder_paths = lambda kind: [str(folder)]
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    return node_module("lora"), folder


def test_load_lora_node_adds_the_lora_and_refuses_what_does_not_fit(lora_node, tmp_path):
    module, folder = lora_node
    node = module.DaxLoadLora()
    _, base = write_base(tmp_path)
    model = Recipe(str(base), compute_dtype="fp32")
    _lightx2v(folder)
    write_lora(folder / "flux.safetensors", {k: torch.zeros(shape) for k, shape in FLUX_KEYS.items()})
    assert module.DaxLoadLora.INPUT_TYPES()["required"]["lora_name"][0] == ["flux.safetensors", "lora.safetensors"]
    (one,) = node.load(model, "lora.safetensors", 0.75)
    (two,) = node.load(one, "lora.safetensors", -1.0)
    assert [(r.path, r.strength) for r in two.loras] == [(str(folder / "lora.safetensors"), s) for s in (0.75, -1.0)]
    assert node.load(model, "lora.safetensors", 0.0) == (model,)  # as ComfyUI's LoraLoader at strength 0
    assert module.DaxLoadLora.IS_CHANGED(lora_name="lora.safetensors", strength=1.0) == one.loras[0].fingerprint
    with pytest.raises(LoraError, match="another model family"):
        node.load(model, "flux.safetensors", 1.0)
    with pytest.raises(FileNotFoundError, match=r"gone\.safetensors"):
        node.load(model, "gone.safetensors", 1.0)


def test_a_lora_on_a_two_expert_model_is_refused_at_the_node(lora_node, tmp_path):
    # Wan2.2's LoRAs come per expert: the node says so, before any sampler runs (one expert alone takes it)
    module, folder = lora_node
    _, high = write_base(tmp_path, seed=1)
    _, low = write_base(tmp_path, seed=2)
    _lightx2v(folder)
    pair = Recipe(str(high), compute_dtype="fp32", model_choice="wan2.2-t2v-a14b", low_noise_weights=str(low))
    with pytest.raises(RecipeError, match="LoRAs on a two-expert model"):
        module.DaxLoadLora().load(pair, "lora.safetensors", 1.0)
    (expert,) = module.DaxLoadLora().load(pair.expert("high"), "lora.safetensors", 1.0)
    assert len(expert.loras) == 1


def test_tiny_lora_command_writes_a_lora_that_fits_its_model(tmp_path):
    from dax_core.__main__ import main

    _, base = write_base(tmp_path)
    out = tmp_path / "tiny-lora.safetensors"
    assert main(["tiny-lora", "--model", str(base), "--out", str(out), "--rank", "8", "--format", "kohya"]) == 0
    plan = plan_lora(out, SPEC)
    assert len(plan.changes) == 69 and not plan.unmatched
    assert {change.pair.rank for change in plan.changes.values() if change.pair is not None} == {8}
