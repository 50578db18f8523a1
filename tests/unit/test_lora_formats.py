"""Every LoRA key format merges into every parameter it can touch, as ComfyUI applies it, and as float64 math says.

The LoRA (``dax_core.lora.tiny.random_lora``) has a low-rank pair (with alpha) on every linear layer and the patch
embedding, a ``diff`` on every norm weight, a ``diff_b`` on every bias and a ``diff_m`` on every modulation: all 69
parameters of the model change by about 6 %. It is written in each format DAX reads (lightx2v/ComfyUI names with
lora_up/lora_down or lora_A/lora_B, diffusers/PEFT names, kohya/musubi names, bare Wan names).

The ComfyUI reference is ComfyUI's own LoRA code (``load_lora_for_models`` and ``ModelPatcher.patch_model``) on its
native WanModel with the same weights, given the same file where it maps that format for Wan. Where its 2025-10
snapshot drops keys, it is given the same tensors under the names it does map: diffusers/PEFT and bare names become
``diffusion_model.<Wan name>``, and ``diff_m`` becomes ``diffusion_model.blocks.N.modulation.diff``. ComfyUI maps
that key but its patcher never writes parameters of non-leaf modules (each block's and the head's modulation), so
for those the reference is ComfyUI's own ``comfy.lora.calculate_weight`` on the patch it mapped.
"""

from __future__ import annotations

import pytest
import torch

from dax_core.lora.tiny import FORMATS, in_format, random_lora
from dax_core.models.spec import WanSpec
from dax_core.runtime.engine import WanEngine
from tests.numerics import rel_error
from tests.unit.lora_helpers import lora_file, merged_f64, with_loras, write_base, write_lora

STRENGTHS = {"lightx2v": 1.0, "comfy_ab": 0.8, "diffusers": -0.5, "kohya": 0.7, "bare": 1.3}
NATIVE_IN_COMFYUI = ("lightx2v", "comfy_ab", "kohya")  # ComfyUI maps these names for Wan (all but diff_m)
# the merged weights: float32 rounding of the weight, of up @ down (4 terms) and of one add, about 1e-7 relative;
# a key merged into the wrong parameter, missed, or scaled by the wrong alpha / rank or strength moves a parameter
# by about 6 % (CHANGED)
MERGED_TOL = 1e-6
CHANGED = 1e-2


def _ours(base, lora, strength: float, **recipe) -> WanEngine:
    return WanEngine.build(with_loras(base, (lora, strength), compute_dtype="fp32", **recipe), "cpu")


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_merges_every_parameter_as_float64_math_says(tmp_path, fmt):
    state, base = write_base(tmp_path)
    components, lora = lora_file(tmp_path, fmt, rank=4, alpha=2.0)
    ours = _ours(base, lora, STRENGTHS[fmt]).model.state_dict()
    expected = merged_f64(state, [(components, STRENGTHS[fmt])])
    assert set(ours) == set(expected)
    for name, value in ours.items():
        assert rel_error(value, expected[name]) <= MERGED_TOL, name
        assert rel_error(state[name], expected[name]) >= CHANGED, f"{name}: the LoRA does not change it"


def test_two_loras_add_up_in_order_and_a_negative_strength_subtracts(tmp_path):
    state, base = write_base(tmp_path)
    first, one = lora_file(tmp_path, "lightx2v", seed=1, rank=4)
    second, two = lora_file(tmp_path, "kohya", seed=2, rank=2, alpha=1.0)
    engine = WanEngine.build(with_loras(base, (one, 0.6), (two, -1.0), compute_dtype="fp32"), "cpu")
    expected = merged_f64(state, [(first, 0.6), (second, -1.0)])
    for name, value in engine.model.state_dict().items():
        assert rel_error(value, expected[name]) <= MERGED_TOL, name


# ComfyUI reads Wan's head count as dim // 128 and fixes the text width at 4096: the spec follows both.
COMFY_SPEC = WanSpec(dim=256, num_layers=2, num_heads=2, ffn_dim=256, text_dim=4096)
FORWARD_TOL = 1e-5  # float32 models agree to ~1e-6 per forward (test_model_reference); a missed key moves it ~1e-2


@pytest.fixture(scope="module")
def comfy(comfyui_importable):
    import comfy.lora
    import comfy.sd

    return comfy


def _comfy_names(components: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LoRA under names ComfyUI maps for Wan: ``diffusion_model.`` + Wan names, diff_m as modulation.diff."""
    out = {}
    for key, t in components.items():
        if key.endswith(".diff_m"):
            out[f"diffusion_model.{key.removesuffix('.diff_m')}.modulation.diff"] = t
        else:
            out[f"diffusion_model.{key}"] = t
    return out


def _comfy_reference(comfy, state, lora_sd, strength):
    """ComfyUI's native WanModel with ``state``, the LoRA applied by ComfyUI's own code; (model, merged weights)."""
    patcher = comfy.sd.load_diffusion_model_state_dict(dict(state), model_options={"dtype": torch.float32})
    patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora_sd, strength, 0.0)
    assert len(patched.patches) == len(state), "ComfyUI did not map every key of the reference LoRA"
    patched.patch_model()
    model = patched.model.diffusion_model
    merged = {name: t.detach().clone() for name, t in model.state_dict().items()}
    for key, patches in patched.patches.items():
        name = key.removeprefix("diffusion_model.")
        if name.endswith("modulation"):  # written by nobody in ComfyUI's patcher: its own merge of the patch
            merged[name] = comfy.lora.calculate_weight(patches, state[name].float().clone(), key)
            model.get_parameter(name).data.copy_(merged[name])
    return model, merged


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_merges_as_comfyui_applies_it(comfy, tmp_path, fmt):
    state, base = write_base(tmp_path, COMFY_SPEC, seed=3)
    components = random_lora(COMFY_SPEC, rank=4, alpha=2.0, seed=1)
    lora_sd = in_format(components, fmt)
    lora = write_lora(tmp_path / f"{fmt}.safetensors", lora_sd)
    if fmt in NATIVE_IN_COMFYUI:  # the same file, its diff_m keys under the name ComfyUI maps
        diff_m = {k: v for k, v in components.items() if k.endswith(".diff_m")}
        reference = {k: v for k, v in lora_sd.items() if not k.endswith(".diff_m")} | _comfy_names(diff_m)
    else:
        reference = _comfy_names(components)
    strength = STRENGTHS[fmt]
    native, merged = _comfy_reference(comfy, state, reference, strength)
    engine = _ours(base, lora, strength)
    ours = engine.model.state_dict()
    assert set(ours) == set(merged)
    for name, value in ours.items():
        assert rel_error(value, merged[name]) <= MERGED_TOL, name
        assert rel_error(state[name], merged[name]) >= CHANGED, f"{name}: the reference does not change it"
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(2, 16, 3, 6, 8, generator=g), torch.tensor([900.0, 250.0])
    ctx = torch.randn(2, 7, COMFY_SPEC.text_dim, generator=g)
    with torch.no_grad():
        assert rel_error(engine.model(x, t, ctx), native(x, t, ctx)) <= FORWARD_TOL
