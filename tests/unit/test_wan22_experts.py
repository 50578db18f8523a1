"""Wan2.2 A14B's two experts: the switch at the official boundary against two native KSamplerAdvanced chained with
start/end steps, one DAX_MODEL of both experts and two DAX samplers chained, the idle expert offloaded and swapped
in, the recipe and Load rules, the engine cache keeping both experts.

Tolerance, as in test_native_parity: float32 on both sides with the same weights, ~1e-6 relative per model call,
through at most 8 steps with CFG 4.5 below 5e-5. Switching one step early or late runs a step with the other expert's
weights, which moves the result by far more than 1e-3 (checked below, so the equality cannot pass by accident).
"""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import pytest
import torch

from dax_core.experts import MODEL_CHOICES
from dax_core.models.loading import WeightsError, inspect_weights
from dax_core.models.spec import WanSpec
from dax_core.models.tiny import random_state_dict, write_tiny_model
from dax_core.models.wan import WanModel
from dax_core.recipe import Recipe, RecipeError
from dax_core.rules import check_recipe
from dax_core.runtime.engine import SampleRequest, WanEngine
from dax_core.runtime.engine_cache import EngineCache, expert_family
from dax_core.runtime.expert_pair import ExpertPair, expert_runs
from dax_core.runtime.host_offload import HostOffload, model_tensors
from dax_core.runtime.model_info import recipe_spec
from dax_core.runtime.schedules import expert_switch_step, ksampler_sigmas
from tests.numerics import rel_error
from tests.unit.comfy_native import comfyui_nodes, native_patcher

SPEC = WanSpec(dim=256, num_layers=2, num_heads=2, ffn_dim=256)  # ComfyUI: dim // 128 heads, 4096-wide text
REL = 5e-5  # see the module docstring
SEED, STEPS, CFG, SHIFT = 21, 8, 4.5, 12.0  # Wan2.2 T2V A14B's official shift
T2V_BOUNDARY = MODEL_CHOICES["wan2.2-t2v-a14b"].boundary
PAIR = Recipe(
    "high.safetensors", compute_dtype="fp32", model_choice="wan2.2-t2v-a14b", low_noise_weights="low.safetensors"
)


def test_boundaries_are_the_official_configurations():
    # Wan2.2 wan/configs/wan_t2v_A14B.py boundary = 0.875, wan_i2v_A14B.py boundary = 0.900
    assert MODEL_CHOICES["wan2.2-t2v-a14b"].boundary == 0.875
    assert MODEL_CHOICES["wan2.2-i2v-a14b"].boundary == 0.900
    assert {MODEL_CHOICES[f"wan2.2-t2v-a14b-{e}"].boundary for e in ("high", "low")} == {0.875}


@pytest.mark.parametrize(("steps", "shift", "boundary"), [(8, 12.0, 0.875), (40, 12.0, 0.875), (40, 5.0, 0.9),
                                                         (20, 8.0, 0.875)])  # fmt: skip
def test_the_switch_step_is_the_first_step_below_the_boundary(steps, shift, boundary):
    # the official rule: timestep >= boundary * 1000 -> high-noise expert; the flow schedule's timestep t = sigma * 1000
    sigmas = ksampler_sigmas("simple", steps, shift)
    k = expert_switch_step(sigmas, boundary)
    assert all(sigmas[i] * 1000 >= boundary * 1000 for i in range(k))
    assert sigmas[k] * 1000 < boundary * 1000
    # closed form of the shifted schedule: sigma(t) = s t / (1 + (s - 1) t) with t = 1 - i / steps
    t_boundary = boundary / (shift - (shift - 1) * boundary)
    assert k == next(i for i in range(steps) if 1 - i / steps < t_boundary)


def test_expert_runs_cut_a_request_at_the_switch():
    req = SampleRequest(torch.ones(1, 4, 8), None, torch.zeros(1, 16, 1, 4, 4), seed=0, steps=8, cfg=1.0, shift=12.0)
    k = expert_switch_step(req.schedule_sigmas(), 0.875)
    high, low = expert_runs(req, 0.875)
    assert (high.expert, high.request.end_at_step, high.request.return_with_leftover_noise) == ("high", k, True)
    assert (low.expert, low.request.start_at_step, low.request.add_noise) == ("low", k, False)
    assert [r.expert for r in expert_runs(dataclasses.replace(req, end_at_step=k), 0.875)] == ["high"]
    assert [r.expert for r in expert_runs(dataclasses.replace(req, start_at_step=k), 0.875)] == ["low"]


# -- against native ComfyUI ------------------------------------------------------------------------------------------


def _native(comfyui, seed: int):

    state = random_state_dict(SPEC, seed=seed)
    patcher = native_patcher(state, SHIFT)
    ours = WanModel(SPEC, dtype=torch.float32)
    ours.load_state_dict(state)
    return patcher, ours.eval()


@pytest.fixture(scope="module")
def comfy(comfyui_importable):
    import comfy.samplers

    nodes = comfyui_nodes(comfyui_importable)
    nodes.comfy.utils.PROGRESS_BAR_ENABLED = False
    high_patcher, high = _native(comfyui_importable, 31)
    low_patcher, low = _native(comfyui_importable, 32)
    g = torch.Generator().manual_seed(8)
    engines = {
        "high": WanEngine(high, PAIR.expert("high"), "cpu"),
        "low": WanEngine(low, PAIR.expert("low"), "cpu"),
    }
    return SimpleNamespace(
        nodes=nodes,
        samplers=comfy.samplers,
        high=high_patcher,
        low=low_patcher,
        engines=engines,
        pair=ExpertPair(PAIR, engines),
        pos=torch.randn(1, 5, 4096, generator=g),
        neg=torch.randn(1, 5, 4096, generator=g),
        empty=torch.zeros(1, 16, 2, 4, 6),
    )


def _native_chain(comfy, sampler: str, switch: int, low_cfg: float = CFG) -> torch.Tensor:
    """The native Wan2.2 workflow: KSamplerAdvanced on the high-noise expert for steps 0..switch, leftover noise
    returned, then on the low-noise expert from switch on (at ``low_cfg``), adding no noise."""
    pos, neg = [[comfy.pos, {}]], [[comfy.neg, {}]]
    advanced = comfy.nodes.KSamplerAdvanced()
    (first,) = advanced.sample(comfy.high, "enable", SEED, STEPS, CFG, sampler, "simple", pos, neg,
                               {"samples": comfy.empty}, 0, switch, "enable")  # fmt: skip
    (second,) = advanced.sample(comfy.low, "disable", SEED, STEPS, low_cfg, sampler, "simple", pos, neg, first,
                                switch, 10000, "disable")  # fmt: skip
    return second["samples"]


def _request(comfy, **options) -> SampleRequest:
    return SampleRequest(positive=comfy.pos, negative=comfy.neg, latent=comfy.empty, seed=SEED, steps=STEPS, cfg=CFG,
                         shift=SHIFT, sampler=options.pop("sampler"), scheduler="simple", **options)  # fmt: skip


def test_native_sigmas_put_the_switch_where_ours_do(comfy):
    native = comfy.samplers.calculate_sigmas(comfy.high.get_model_object("model_sampling"), "simple", STEPS)
    ours = ksampler_sigmas("simple", STEPS, SHIFT)
    assert expert_switch_step(native, T2V_BOUNDARY) == expert_switch_step(ours, T2V_BOUNDARY) == 6


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "dpmpp_2m", "uni_pc"])
def test_one_dax_model_of_both_experts_equals_two_chained_native_samplers(comfy, sampler):
    switch = expert_switch_step(ksampler_sigmas("simple", STEPS, SHIFT), T2V_BOUNDARY)
    expected = _native_chain(comfy, sampler, switch)
    result = comfy.pair.sample(_request(comfy, sampler=sampler))
    assert result.steps == STEPS
    assert rel_error(result.latent, expected) < REL
    assert any(f"high-noise expert {switch}, low-noise expert {STEPS - switch} steps" in n for n in result.notes)
    if sampler == "euler":  # a switch one step off is a different run
        for other in (switch - 1, switch + 1):
            assert rel_error(result.latent, _native_chain(comfy, sampler, other)) > 1e-3


def test_the_low_noise_expert_takes_its_own_guidance_as_a_second_native_sampler_does(comfy):
    # the official A14B T2V settings guide the high-noise expert at 4 and the low-noise one at 3
    switch = expert_switch_step(ksampler_sigmas("simple", STEPS, SHIFT), T2V_BOUNDARY)
    result = comfy.pair.sample(_request(comfy, sampler="euler", low_noise_cfg=3.0))
    assert rel_error(result.latent, _native_chain(comfy, "euler", switch, low_cfg=3.0)) < REL
    assert rel_error(result.latent, _native_chain(comfy, "euler", switch)) > 1e-3  # not the run at one cfg
    with pytest.raises(ValueError, match="low_noise_cfg guides the low-noise expert of a two-expert"):
        comfy.engines["low"].sample(_request(comfy, sampler="euler", low_noise_cfg=3.0))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_two_dax_samplers_chained_each_with_its_expert_equal_native(comfy, sampler):
    switch = expert_switch_step(ksampler_sigmas("simple", STEPS, SHIFT), T2V_BOUNDARY)
    first = comfy.engines["high"].sample(_request(comfy, sampler=sampler, end_at_step=switch,
                                                  return_with_leftover_noise=True))  # fmt: skip
    continued = dataclasses.replace(_request(comfy, sampler=sampler), latent=first.latent, add_noise=False,
                                    start_at_step=switch)  # fmt: skip
    second = comfy.engines["low"].sample(continued)
    assert rel_error(second.latent, _native_chain(comfy, sampler, switch)) < REL


def test_progress_of_a_pair_counts_the_whole_run(comfy):
    seen: list = []
    steps: list[int] = []
    comfy.pair.sample(_request(comfy, sampler="euler"), on_step=lambda i, total, x: steps.append((i, total)),
                      on_progress=seen.append)  # fmt: skip
    assert steps == [(i, STEPS) for i in range(STEPS)]
    assert [(p.step, p.total) for p in seen] == [(i + 1, STEPS) for i in range(STEPS)]
    assert all(a.elapsed_s <= b.elapsed_s for a, b in itertools.pairwise(seen))


# -- the idle expert in host memory -----------------------------------------------------------------------------------


def _tiny_pair(seed: int, offload: bool) -> ExpertPair:
    spec = WanSpec(dim=64, num_layers=2, num_heads=4, ffn_dim=128, text_dim=32)
    built: list[str] = []

    def build(recipe: Recipe, device: torch.device) -> WanEngine:
        built.append(recipe.model_choice)
        model = WanModel(spec, dtype=torch.float32)
        model.load_state_dict(random_state_dict(spec, seed=seed + len(built)))
        return WanEngine(model.eval(), recipe, device)

    pair = ExpertPair.build(PAIR, "cpu", build=build, offload=offload)
    assert built == ["wan2.2-t2v-a14b-high", "wan2.2-t2v-a14b-low"]
    return pair


def _tiny_request(**options) -> SampleRequest:
    g = torch.Generator().manual_seed(2)
    return SampleRequest(torch.randn(1, 3, 32, generator=g), torch.randn(1, 3, 32, generator=g),
                         torch.zeros(1, 16, 2, 4, 4), seed=3, steps=6, cfg=3.0, shift=12.0, sampler="euler",
                         **options)  # fmt: skip


def test_the_idle_expert_waits_in_host_memory_and_is_swapped_in_at_the_boundary():
    resident, offloaded = _tiny_pair(0, offload=False), _tiny_pair(0, offload=True)
    assert not resident.offloads
    # built: the high-noise expert went to host memory before the low-noise one was built
    assert not offloaded.offloads["high"].resident and offloaded.offloads["low"].resident
    req = _tiny_request()
    expected = resident.sample(req)
    got = offloaded.sample(req)
    assert torch.equal(got.latent, expected.latent)  # the same weights, moved and back
    assert [e for e, _ in offloaded.swaps] == ["high", "low"]  # in for the first steps, out at the boundary
    assert offloaded.offloads["low"].resident and not offloaded.offloads["high"].resident
    assert any("swapped in the low-noise expert" in n for n in got.notes)
    # a run that needs the low-noise expert alone swaps nothing more
    switch = expert_switch_step(req.schedule_sigmas(), T2V_BOUNDARY)
    offloaded.sample(dataclasses.replace(req, start_at_step=switch))
    assert offloaded.swaps == []


def test_host_offload_moves_every_tensor_in_place_and_back():
    model = WanModel(WanSpec(dim=64, num_layers=1, num_heads=4, ffn_dim=64, text_dim=32), dtype=torch.float32)
    model.blocks[0].self_attn.q.weight_scale = torch.full((), 2.0)  # a plain tensor attribute (fp8 scales)
    tensors = model_tensors(model)
    assert any(t is model.blocks[0].self_attn.q.weight_scale for t in tensors)
    before = {id(t): (t.data_ptr(), t.clone()) for t in tensors}
    offload = HostOffload(model, torch.device("cpu"))
    offload.offload()
    for t in tensors:  # same tensor objects, other storage, same values
        assert t.data_ptr() != before[id(t)][0] and torch.equal(t, before[id(t)][1])
    offload.load()
    assert all(torch.equal(t, before[id(t)][1]) for t in tensors) and offload.resident


def test_a_model_replayed_as_cuda_graphs_is_not_offloaded():
    model = WanModel(WanSpec(dim=64, num_layers=1, num_heads=4, ffn_dim=64, text_dim=32), device="meta")
    model.block_graphs = object()
    with pytest.raises(ValueError, match="CUDA graphs cannot leave the GPU"):
        HostOffload(model, torch.device("cuda"))


# -- recipes, files, rules, the cache --------------------------------------------------------------------------------


def test_a_pair_recipe_names_both_experts_and_round_trips():
    assert PAIR.is_expert_pair and Recipe.from_dict(PAIR.to_dict()) == PAIR
    high, low = PAIR.expert("high"), PAIR.expert("low")
    assert (high.weights, high.model_choice, high.low_noise_weights) == (
        "high.safetensors",
        "wan2.2-t2v-a14b-high",
        None,
    )
    assert (low.weights, low.model_choice) == ("low.safetensors", "wan2.2-t2v-a14b-low")
    assert "model" not in Recipe("x").to_dict()  # recipes of one model keep their fingerprints
    with pytest.raises(RecipeError, match="needs the low-noise expert's weights"):
        Recipe("x", model_choice="wan2.2-t2v-a14b")
    with pytest.raises(RecipeError, match="not a two-expert model"):
        Recipe("x", model_choice="wan2.2-t2v-a14b-high", low_noise_weights="y")
    with pytest.raises(RecipeError, match=r"model 'wan2\.3' is not one of auto, wan2\.2-t2v-a14b"):
        Recipe("x", model_choice="wan2.3")


def test_recipe_spec_checks_the_files_against_the_model_choice(tmp_path):
    high = str(write_tiny_model(tmp_path / "high.safetensors", seed=1))
    low = str(write_tiny_model(tmp_path / "low.safetensors", seed=2))
    other = str(write_tiny_model(tmp_path / "other.safetensors", dim=128, num_heads=4, seed=3))
    ti2v = str(write_tiny_model(tmp_path / "ti2v.safetensors", variant="ti2v", seed=4))
    assert recipe_spec(Recipe(high, model_choice="wan2.2-t2v-a14b", low_noise_weights=low)).model_type == "t2v"
    with pytest.raises(WeightsError, match=r"low-noise expert's shapes .* differ"):
        recipe_spec(Recipe(high, model_choice="wan2.2-t2v-a14b", low_noise_weights=other))
    with pytest.raises(WeightsError, match=r"a ti2v model .* not a t2v expert"):
        recipe_spec(Recipe(ti2v, model_choice="wan2.2-t2v-a14b-high"))


def test_step_caches_are_refused_on_wan22_and_loras_on_a_pair(tmp_path):
    from dax_core.cache.config import MagcacheConfig, TeacacheConfig
    from dax_core.recipe import LoraRef

    expert = Recipe("x", model_choice="wan2.2-t2v-a14b-high")
    spec_14b = WanSpec(dim=5120, num_layers=40, num_heads=40, ffn_dim=13824)
    ti2v = WanSpec(dim=3072, num_layers=30, num_heads=24, ffn_dim=14336, in_dim=48, out_dim=48, model_type="ti2v")
    for recipe, spec in ((expert, spec_14b), (PAIR, spec_14b), (Recipe("x"), ti2v)):
        for cache in (TeacacheConfig(), MagcacheConfig()):
            with pytest.raises(RecipeError, match=r"no published calibration for (Wan2\.2|.*A14B)"):
                check_recipe(recipe.with_acceleration(cache), spec)
    check_recipe(expert.with_acceleration(TeacacheConfig(coefficients=(1.0, 0.0))), spec_14b)  # the user's own
    check_recipe(Recipe("x").with_acceleration(TeacacheConfig()), spec_14b)  # Wan2.1 14B keeps its coefficients
    with pytest.raises(RecipeError, match="LoRAs on a two-expert model"):
        check_recipe(PAIR.with_loras((LoraRef("l.safetensors", 1.0, "f"),)), spec_14b)


def test_the_engine_cache_keeps_both_experts_of_a_model():
    cache: EngineCache[str] = EngineCache()
    high, low = PAIR.expert("high"), PAIR.expert("low")
    assert expert_family(high) == expert_family(low) != "" and expert_family(PAIR) == expert_family(Recipe("x")) == ""
    cache.get(high, lambda r: "high engine", family=expert_family(high))
    cache.get(low, lambda r: "low engine", family=expert_family(low))
    assert len(cache) == 2  # the second expert did not evict the first
    assert sorted(cache.family(expert_family(high))) == ["high engine", "low engine"] and cache.family("") == []
    assert cache.get(high, lambda r: "rebuilt", family=expert_family(high)) == "high engine"
    other = Recipe("y")
    cache.get(other, lambda r: "other engine", family=expert_family(other))
    assert len(cache) == 1  # another model takes the devices
    i2v_high = Recipe("z", model_choice="wan2.2-i2v-a14b-high")
    assert expert_family(i2v_high) != expert_family(high)


def test_a_pair_recipe_builds_both_experts_each_with_the_recipes_levers(tmp_path):
    from dax_core.quant.config import QuantizeConfig
    from dax_core.quant.linear import QuantLinear
    from dax_core.runtime.distributed import build_engine

    high = str(write_tiny_model(tmp_path / "high.safetensors", seed=1, dtype="fp32"))
    low = str(write_tiny_model(tmp_path / "low.safetensors", seed=2, dtype="fp32"))
    recipe = Recipe(high, compute_dtype="fp32", model_choice="wan2.2-t2v-a14b", low_noise_weights=low)
    recipe = recipe.with_acceleration(QuantizeConfig(dtype="int8", backend="torch"))
    pair = build_engine(recipe, torch.device("cpu"), None)
    assert isinstance(pair, ExpertPair) and not pair.offloads  # on the CPU both stay where they are
    models = [pair.engines[e].model for e in ("high", "low")]
    assert models[0] is not models[1]
    for model in models:  # each expert quantized on its own
        assert sum(isinstance(m, QuantLinear) for m in model.modules()) > 0
    assert not torch.equal(models[0].blocks[0].ffn[0].qweight, models[1].blocks[0].ffn[0].qweight)
    assert pair.engines["low"].recipe == recipe.expert("low")


def test_load_wan_makes_one_dax_model_of_both_experts(comfyui_importable, tmp_path, monkeypatch):
    from tests.unit.node_modules import node_module

    load_wan = node_module("load_wan")
    monkeypatch.setattr(load_wan, "resolve_model", lambda name: str(tmp_path / name))
    write_tiny_model(tmp_path / "high.safetensors", seed=1)
    write_tiny_model(tmp_path / "low.safetensors", seed=2)
    write_tiny_model(tmp_path / "ti2v.safetensors", variant="ti2v", seed=3)
    optional = load_wan.DaxLoadWan.INPUT_TYPES()["optional"]
    assert optional["model"][1]["default"] == "auto" and optional["low_noise_model_name"][1]["default"] == "none"
    node = load_wan.DaxLoadWan()
    (pair,) = node.load("high.safetensors", "default", "bf16", "wan2.2-t2v-a14b", "low.safetensors")
    assert pair.is_expert_pair and pair.low_noise_weights == str(tmp_path / "low.safetensors")
    # the header says Wan2.1 14B-like shapes; the recipe's model is what the user chose
    assert (pair.model.family, pair.model.variant, pair.model.expert) == ("wan2.2", "wan2.2-t2v-a14b", "high")
    (low,) = node.load("low.safetensors", "default", "bf16", "wan2.2-t2v-a14b-low")
    assert (low.model.family, low.model.variant, low.model.expert) == ("wan2.2", "wan2.2-t2v-a14b", "low")
    (single,) = node.load("high.safetensors", "default", "bf16")
    assert single == Recipe(
        str(tmp_path / "high.safetensors"), model=inspect_weights(tmp_path / "high.safetensors").model
    )
    with pytest.raises(RecipeError, match="needs the low-noise expert's weights"):
        node.load("high.safetensors", "default", "bf16", "wan2.2-t2v-a14b")
    with pytest.raises(WeightsError, match="not a t2v expert"):
        node.load("ti2v.safetensors", "default", "bf16", "wan2.2-t2v-a14b-high")


def test_both_compiled_experts_share_one_graph_and_the_switch_compiles_nothing(fresh_dynamo):
    # Each expert's blocks are compiled on their own model; the weights are graph inputs, so one graph serves the
    # blocks of both experts, and a second run (switching experts at the boundary again) compiles nothing new.
    from dax_core.compile import CompileConfig
    from dax_core.compile.regional import compile_blocks
    from tests.unit.test_compile import CountingBackend

    backend = CountingBackend()
    pair = _tiny_pair(0, offload=False)
    for engine in pair.engines.values():
        compile_blocks(engine.model, CompileConfig(backend="aot_eager"), backend=backend)
    eager = _tiny_pair(0, offload=False).sample(_tiny_request())
    first = pair.sample(_tiny_request())
    assert backend.graphs == 1  # the blocks of both experts, every step and branch
    second = pair.sample(_tiny_request())
    assert backend.graphs == 1
    # traced graphs run the same operations in the same order: float32, equal to the eager pair within rounding
    assert rel_error(first.latent, eager.latent) < 1e-5 and torch.equal(first.latent, second.latent)
