"""Layouts from the sampler's widgets and the generate flags, and group configs: right degrees, or an error that
says what to change."""

from __future__ import annotations

import argparse

import pytest

from dax_core.runtime.distributed import RankEnv, parallel_layout
from dax_core.runtime.generate import layout_from_args
from dax_core.runtime.group import GroupConfig, agent_command


@pytest.mark.parametrize(
    ("world", "mode", "degree", "cfg_parallel", "expected"),
    [
        (4, "ulysses", 2, False, (4, 1)),
        (4, "ring", 2, False, (1, 4)),
        (8, "hybrid", 2, False, (2, 4)),
        (8, "hybrid", 4, True, (4, 1)),  # 4 processes per CFG branch, all Ulysses
        (4, "ulysses", 2, True, (2, 1)),
    ],
)
def test_layout_degrees(world, mode, degree, cfg_parallel, expected):
    layout = parallel_layout(world, mode, degree, cfg_parallel)
    assert (layout.ulysses, layout.ring, layout.cfg_parallel, layout.world_size) == (*expected, cfg_parallel, world)


def test_layout_errors_say_what_to_change():
    with pytest.raises(ValueError, match="use an even number of GPUs or turn CFG-parallel off"):
        parallel_layout(3, "ulysses", cfg_parallel=True)
    with pytest.raises(ValueError, match=r"must divide the 6 processes .* use one of 1, 2, 3, 6"):
        parallel_layout(6, "hybrid", ulysses_degree=4)
    with pytest.raises(ValueError, match="not one of ulysses, ring, hybrid"):
        parallel_layout(2, "tensor")


def _flags(ulysses=None, ring=None, cfg_parallel=False) -> argparse.Namespace:
    return argparse.Namespace(ulysses=ulysses, ring=ring, cfg_parallel=cfg_parallel, no_overlap=False)


def test_generate_flags_fill_in_the_missing_degree():
    assert (layout_from_args(_flags(), 8).ulysses, layout_from_args(_flags(), 8).ring) == (8, 1)
    layout = layout_from_args(_flags(ring=2), 8)
    assert (layout.ulysses, layout.ring) == (4, 2)
    layout = layout_from_args(_flags(ulysses=2, cfg_parallel=True), 8)
    assert (layout.ulysses, layout.ring, layout.cfg_parallel) == (2, 2, True)
    with pytest.raises(ValueError, match="--ulysses 3 must divide the 8 processes per branch"):
        layout_from_args(_flags(ulysses=3), 8)


def test_group_config_checks():
    with pytest.raises(ValueError, match="layout is for 4 processes but the group has 1 x 2 = 2"):
        GroupConfig(2, device="cpu", parallel=parallel_layout(4))
    with pytest.raises(ValueError, match="fixed rendezvous endpoint"):
        GroupConfig(1, device="cpu", nnodes=2)
    with pytest.raises(ValueError, match="device 'mps' is not one of cuda, cpu"):
        GroupConfig(2, device="mps")
    with pytest.raises(ValueError, match="2 processes need as many GPUs"):
        GroupConfig(2, cuda_devices=(3,))
    with pytest.raises(ValueError, match="a one-machine group meets through a private file of its owner"):
        GroupConfig(2, device="cpu", rdzv_endpoint="0.0.0.0:29500")  # no TCP store on one machine
    with pytest.raises(ValueError, match=r"liveness must be a dax_core\.runtime\.liveness\.Liveness"):
        GroupConfig(2, device="cpu", liveness=60.0)


def test_agent_command_uses_pytorchs_launcher_without_restarts():
    cmd = agent_command(GroupConfig(2, device="cpu"), "127.0.0.1:29555", python="python")
    assert cmd[:3] == ["python", "-m", "torch.distributed.run"]
    flags = dict(zip(cmd[3:-2:2], cmd[4:-2:2], strict=True))
    assert flags["--nproc-per-node"] == "2" and flags["--max-restarts"] == "0" and flags["--rdzv-backend"] == "c10d"
    assert flags["--rdzv-endpoint"] == "127.0.0.1:29555" and flags["--local-addr"] == "127.0.0.1"
    assert cmd[-2:] == ["-m", "dax_core.runtime.worker"]


def test_rank_env_reads_torchrun_variables():
    env = RankEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert env == RankEnv(3, 4, 1, 2)
    assert RankEnv.from_environ({}) == RankEnv(0, 1, 0, 1)
    with pytest.raises(ValueError, match="inconsistent"):
        RankEnv.from_environ({"RANK": "4", "WORLD_SIZE": "4"})
