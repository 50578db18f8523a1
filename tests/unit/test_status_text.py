"""The sampler's status text, formatted from what the engine reports."""

from __future__ import annotations

import torch

from dax_core.cache.base import BranchReport, StepCacheReport
from dax_core.runtime.engine import SampleResult
from dax_core.runtime.progress import StepProgress
from tests.unit.node_modules import node_module

status = node_module("status_text")

ONE_GPU = status.Setup("NVIDIA H200", "1 GPU")
GROUP = status.Setup("NVIDIA H200", "2 GPUs: ulysses=2, overlap on", group=True, reused=True)


def test_durations_read_as_a_person_says_them():
    assert [status.duration(s) for s in (0.4, 42, 65, 3599, 3600, 7322)] == [
        "0 s", "42 s", "1 min 05 s", "59 min 59 s", "1 h 00 min", "2 h 02 min"
    ]  # fmt: skip


def test_the_live_status_gives_pace_time_left_skips_and_where():
    p = StepProgress(12, 50, elapsed_s=40.0, first_step_s=18.0, cache="TeaCache", skipped=(("cond", 3), ("uncond", 2)))
    assert status.progress_text(p, GROUP).splitlines() == [
        "step 12 / 50 · 2.00 s/step · about 1 min 16 s left",  # 38 steps of (40 - 18) / 11 s
        "TeaCache skipped so far: cond 3, uncond 2",
        "2 GPUs: ulysses=2, overlap on · NVIDIA H200 · warm worker group reused",
    ]
    first = StepProgress(1, 4, elapsed_s=25.3, first_step_s=25.3, cache="MagCache")
    assert status.progress_text(first, ONE_GPU).splitlines() == [
        "step 1 / 4 · first step 25.3 s · about 1 min 16 s left",
        "MagCache skipped so far: none yet",
        "1 GPU · NVIDIA H200 · model loaded",
    ]
    last = StepProgress(4, 4, elapsed_s=31.0, first_step_s=25.3)
    assert status.progress_text(last, status.Setup("CPU", reused=True)).splitlines() == [
        "step 4 / 4 · 1.90 s/step",
        "CPU · model already loaded",
    ]


def test_the_summary_is_the_engines_with_where_it_ran():
    report = StepCacheReport("TeaCache", 4, (BranchReport("cond", "CCSC"), BranchReport("uncond", "CSSC")))
    kernels = ("attention: SageAttention2", "linears: bfloat16")
    result = SampleResult(
        torch.zeros(1), 4, 30.4, 25.3, report,
        first_step_compiled=True, kernels=kernels, peak_memory_bytes=(19 * 2**30,),
    )  # fmt: skip
    assert status.summary_text(result, ONE_GPU).splitlines() == [
        "4 steps in 30.4 s (first step 25.3 s, compilation included, then 1.70 s/step)",
        "TeaCache skipped cond 1/4, uncond 2/4 steps (~1.60x fewer transformer passes)",
        "attention: SageAttention2",
        "linears: bfloat16",
        "peak GPU memory: 19.0 GiB",
        "1 GPU · NVIDIA H200 · model loaded",
    ]


def test_a_group_of_one_kind_of_gpu_is_named_once():
    assert status.device_names(["NVIDIA H200", "NVIDIA H200"]) == "NVIDIA H200"
    assert status.device_names(["NVIDIA H200", "NVIDIA H100"]) == "NVIDIA H200, NVIDIA H100"
