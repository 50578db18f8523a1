"""ParallelConfig: frozen, validated, and every layout that cannot work says which ones do."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dax_core.models.spec import WAN21_T2V_1_3B, WAN21_T2V_14B, WanSpec
from dax_core.parallel import ParallelConfig, sequence_layouts


def test_config_is_frozen_and_round_trips_through_json():
    cfg = ParallelConfig(world_size=8, ulysses=4, ring=2, cfg_parallel=False, overlap=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ring = 1  # type: ignore[misc]
    assert ParallelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert (cfg.sequence_degree, cfg.cfg_degree) == (8, 1)
    assert ParallelConfig(8, 2, 2, cfg_parallel=True).sequence_degree == 4


def test_ulysses_degree_that_does_not_divide_the_heads_names_the_alternatives():
    cfg = ParallelConfig(world_size=8, ulysses=8)
    with pytest.raises(ValueError) as err:
        cfg.validate_for(WAN21_T2V_1_3B)
    assert str(err.value) == (
        "ulysses degree 8 must divide the 12 heads of Wan2.1 1.3B; use ulysses 2, 3, 4, 6 or 12, "
        "or add ring: for 8 GPUs use ulysses=4 ring=2, ulysses=2 ring=4 or ring=8"
    )
    ParallelConfig(world_size=8, ulysses=8).validate_for(WAN21_T2V_14B)  # 40 heads: fine


def test_heads_message_for_14b_and_cfg_parallel_counts_gpus_per_branch():
    with pytest.raises(ValueError) as err:
        ParallelConfig(world_size=6, ulysses=3, cfg_parallel=True).validate_for(WAN21_T2V_14B)
    assert str(err.value) == (
        "ulysses degree 3 must divide the 40 heads of Wan2.1 14B; use ulysses 2, 4, 5, 8, 10, 20 or 40, "
        "or add ring: for 3 GPUs per branch use ring=3"
    )


def test_custom_spec_is_named_by_its_shape():
    spec = WanSpec(dim=96, num_layers=2, num_heads=6, ffn_dim=128, text_dim=32)
    with pytest.raises(ValueError, match="the 6 heads of custom-d96-l2-h6"):
        ParallelConfig(world_size=4, ulysses=4).validate_for(spec)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"world_size": 4, "ulysses": 2},
            "ulysses 2 × ring 1 = 2 must equal the 4 GPUs; for 4 GPUs use ulysses=4, ulysses=2 ring=2 or ring=4",
        ),
        (
            {"world_size": 4, "ulysses": 2, "ring": 2, "cfg_parallel": True},
            "ulysses 2 × ring 2 × 2 (CFG-parallel) = 8 must equal the 4 GPUs; "
            "for 4 GPUs with CFG-parallel use ulysses=2 or ring=2",
        ),
        ({"world_size": 3, "ulysses": 3, "cfg_parallel": True}, "needs an even number of GPUs; got 3"),
        ({"world_size": 0}, "world_size must be a positive integer, got 0"),
        ({"world_size": 2, "ulysses": True, "ring": 2}, "ulysses must be a positive integer, got True"),
        ({"world_size": 2, "ulysses": 2, "overlap": "yes"}, "overlap must be True or False"),
    ],
)
def test_invalid_configs_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError) as err:
        ParallelConfig(**kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("world", "spec", "cfg_parallel", "layout"),
    [
        (8, WAN21_T2V_1_3B, False, (4, 2)),  # 12 heads: Ulysses 4, ring 2
        (8, WAN21_T2V_14B, False, (8, 1)),
        (3, WAN21_T2V_14B, False, (1, 3)),  # 40 heads, 3 GPUs: ring only
        (8, WAN21_T2V_1_3B, True, (4, 1)),
        (1, WAN21_T2V_14B, False, (1, 1)),
    ],
)
def test_auto_prefers_the_largest_ulysses_degree_that_divides_the_heads(world, spec, cfg_parallel, layout):
    cfg = ParallelConfig.auto(world, spec, cfg_parallel=cfg_parallel)
    assert (cfg.ulysses, cfg.ring, cfg.cfg_parallel) == (*layout, cfg_parallel)
    cfg.validate_for(spec)


def test_sequence_layouts_lists_every_factorisation():
    assert sequence_layouts(8) == [(8, 1), (4, 2), (2, 4), (1, 8)]
    assert sequence_layouts(8, num_heads=12) == [(4, 2), (2, 4), (1, 8)]
