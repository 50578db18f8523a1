from __future__ import annotations

import dataclasses
import json

import pytest

from dax_core.recipe import Recipe, RecipeError


def test_recipe_is_frozen_and_round_trips_through_plain_json():
    r = Recipe("/models/wan.safetensors", weight_dtype="fp8_e4m3fn", compute_dtype="bf16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.weights = "other"  # type: ignore[misc]
    data = json.loads(json.dumps(r.to_dict()))
    assert Recipe.from_dict(data) == r
    assert Recipe.from_dict(data).fingerprint() == r.fingerprint()


def test_fingerprint_changes_with_any_field():
    base = Recipe("a.safetensors")
    others = [Recipe("b.safetensors"), Recipe("a.safetensors", "fp16"), Recipe("a.safetensors", compute_dtype="fp16")]
    assert len({base.fingerprint(), *(o.fingerprint() for o in others)}) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weights": ""}, "weights path"),
        ({"weights": "a", "weight_dtype": "int4"}, "weight dtype 'int4'"),
        ({"weights": "a", "compute_dtype": "fp8"}, "compute dtype 'fp8'"),
    ],
)
def test_invalid_values_say_what_to_change(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        Recipe(**kwargs)


def test_unknown_acceleration_kind_is_rejected():
    with pytest.raises(RecipeError, match="unknown acceleration kind"):
        Recipe.from_dict({"weights": "a", "accelerations": [{"kind": "warp-drive"}]})


def test_lineage_walks_back_through_with_acceleration_and_is_not_part_of_the_value():
    from dax_core.cache.config import TeacacheConfig
    from dax_core.compile import CompileConfig

    loaded = Recipe("a.safetensors")
    cached = loaded.with_acceleration(TeacacheConfig())
    compiled = cached.with_acceleration(CompileConfig())
    assert list(compiled.lineage()) == [compiled, cached, loaded]
    assert [r is s for r, s in zip(compiled.lineage(), (compiled, cached, loaded), strict=True)] == [True] * 3
    rebuilt = Recipe.from_dict(compiled.to_dict())
    assert rebuilt == compiled and list(rebuilt.lineage()) == [rebuilt]  # the dict carries no history


def test_the_resolved_model_round_trips_with_the_recipe_and_is_part_of_its_value():
    from dax_core.models.info import ModelInfo
    from dax_core.models.spec import PRESETS

    model = ModelInfo(PRESETS["wan2.1-i2v-14b"], "wan2.1-i2v-14b")
    r = Recipe("i2v.safetensors", model=model)
    again = Recipe.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r and again.model == model and again.model.spec.model_type == "i2v"
    assert r.fingerprint() != Recipe("i2v.safetensors").fingerprint()
    assert "model" not in Recipe("t2v.safetensors").to_dict()  # recipes made without one keep their old dict
    expert = ModelInfo(PRESETS["wan2.1-t2v-14b"], "wan2.2-t2v-a14b", family="wan2.2", expert="high")
    assert ModelInfo.from_dict(json.loads(json.dumps(expert.to_dict()))) == expert


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"family": "wan3"}, "family 'wan3'"), ({"expert": "middle"}, "expert 'middle'"), ({"variant": ""}, "variant")],
)
def test_model_info_refuses_unknown_values(kwargs, message):
    from dax_core.models.info import ModelInfo
    from dax_core.models.spec import WAN21_T2V_14B

    with pytest.raises(ValueError, match=message):
        ModelInfo(**({"spec": WAN21_T2V_14B, "variant": "wan2.1-t2v-14b"} | kwargs))


def test_the_recipe_module_registers_no_lever_itself():
    import subprocess
    import sys

    code = (
        "from dax_core.recipe import Recipe, RecipeError\n"
        "try:\n"
        "    Recipe.from_dict({'weights': 'w', 'accelerations': [{'kind': 'teacache', 'threshold': 0.3}]})\n"
        "except RecipeError as e:\n"
        "    assert 'import dax_core.accelerations' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('a lever was registered without being imported')\n"
        "import dax_core.accelerations\n"
        "Recipe.from_dict({'weights': 'w', 'accelerations': [{'kind': 'teacache', 'threshold': 0.3}]})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
