"""The Multi-GPU Sampler with gpus = 2 through the real ComfyUI server (CPU workers, gloo): the group starts once and
serves the next prompt; a Cancel (POST /interrupt) stops the run and keeps the group; bad prompts are node errors
that leave the warm group as it was; a stopped rank ends the prompt (within 2 s with a Cancel, by its silence
without one); "Unload models" releases the group; nothing of a group listens beyond loopback or stays in temp."""

from __future__ import annotations

import copy
import ipaddress
import math
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from dax_core.demo.comfy_server import ComfyServer, PromptFailed, PromptRejected

pytestmark = pytest.mark.comfyui

RUN_TIMEOUT = 300.0
GROUP_READY = re.compile(r"worker group \w+: 2 ranks on cpu ready")
SAMPLING = re.compile(r"Multi-GPU Sampler: (\d+) steps on worker group (\w+)")
STOPPED = re.compile(r"worker group \w+: request \d+ (?:cancelled|stopped) after step (\d+)")
CANCEL_BOUND_S = 2.0
"""What a Cancel may take whatever the ranks do: the ranks get 1 s (``Liveness.cancel_s``) to stop together, then
every process of the group is killed with SIGKILL, which a stopped process cannot delay."""
HANG_TIMEOUT_S = 5.0  # the sampler's hang_timeout widget (its minimum): a rank silent this long is stopped
FAILURE_SLACK_S = 15.0
"""Past the hang timeout, what the failure may take to become the prompt's error: the owner looks every 0.05 s, hears
the ranks out for up to 2 s and kills them, then ComfyUI records the error; generous for a loaded 2-core machine,
and far below the 600 s collective timeout the error would otherwise wait for."""
OTHER_TEXT_WIDTH = 512  # the tiny DiT takes the workflow's 768-wide T5-base text
SUMMARY = "dax_summary"
LAYOUT = "2 GPUs: ulysses=2, overlap on"


def _videos(server: ComfyServer, outputs: dict[str, Any]) -> list:
    videos = [p for p in server.output_files(outputs) if p.suffix == ".mp4"]
    assert len(videos) == 1 and videos[0].stat().st_size > 0, f"expected one saved video, got {outputs}"
    return videos


def _wait_for_log(server: ComfyServer, pattern: re.Pattern, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(pattern.findall(server.log_text())) < count:
        assert time.monotonic() < deadline, f"no {pattern.pattern!r} in the log\n{server.log_tail()}"
        time.sleep(0.05)


def _ranks(server: ComfyServer) -> dict[int, psutil.Process]:
    """The server's worker-group ranks by rank."""
    ranks = {}
    for p in psutil.Process(server.pid).children(recursive=True):
        try:
            if "dax_core.runtime.worker" in p.cmdline():
                ranks[int(p.environ()["RANK"])] = p
        except (psutil.Error, KeyError):
            pass
    return ranks


def _wait_until_gone(procs: list[psutil.Process], within_s: float = 20.0) -> None:
    _, alive = psutil.wait_procs(procs, timeout=within_s)
    assert not alive, f"processes left behind: {alive}"


def _node(prompt: dict, class_type: str) -> dict:
    return next(n for n in prompt.values() if n["class_type"] == class_type)


def _with_step_caches(prompt: dict, *, teacache: str | None, magcache: str | None) -> dict:
    """The prompt with a TeaCache and/or a MagCache node between the loader and the sampler."""
    prompt = copy.deepcopy(prompt)
    sampler = _node(prompt, "DaxMultiGPUSampler")["inputs"]
    upstream = sampler["dax_model"]
    if teacache is not None:
        inputs = {"threshold": 0.2, "coefficients": teacache, "mode": "e0", "start_percent": 0.0, "end_percent": 1.0}
        inputs |= {"max_consecutive_skips": 0, "cache_device": "model", "custom_coefficients": ""}
        prompt["90"] = {"class_type": "DaxTeacache", "inputs": {"dax_model": upstream, **inputs}}
        upstream = ["90", 0]
    if magcache is not None:
        inputs = {"threshold": 0.12, "max_consecutive_skips": 2, "retention_ratio": 0.2, "end_percent": 1.0}
        inputs |= {"model": magcache, "cache_device": "model"}
        prompt["91"] = {"class_type": "DaxMagcache", "inputs": {"dax_model": upstream, **inputs}}
        upstream = ["91", 0]
    sampler["dax_model"] = upstream
    return prompt


def _with_text_width(prompt: dict, width: int) -> dict:
    """The prompt with its positive conditioning resized to ``width`` by the test-only node (same recipe)."""
    prompt = copy.deepcopy(prompt)
    sampler = _node(prompt, "DaxMultiGPUSampler")["inputs"]
    inputs = {"conditioning": sampler["positive"], "width": width}
    prompt["92"] = {"class_type": "DaxTestConditioningWidth", "inputs": inputs}
    sampler["positive"] = ["92", 0]
    return prompt


def _sampler_inputs(prompt: dict, **inputs: Any) -> dict:
    prompt = copy.deepcopy(prompt)
    _node(prompt, "DaxMultiGPUSampler")["inputs"].update(inputs)
    return prompt


def _refusal(server: ComfyServer, prompt: dict) -> str:
    """The node error a bad prompt ends with: ComfyUI's validation, or the node's exception while it runs."""
    try:
        server.run(prompt, timeout=RUN_TIMEOUT)
    except PromptRejected as e:
        return str(e)
    except PromptFailed as e:
        return f"{e.node_type}: {e.exception_type}: {e.exception_message}"
    raise AssertionError("the prompt ran")


def test_two_prompts_share_one_worker_group_and_a_cancel_keeps_it(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    groups_before = len(GROUP_READY.findall(comfy_server.log_text()))
    prompt = tiny_prompt(seed=21, gpus=2)
    sampler = next(k for k, node in prompt.items() if node["class_type"] == "DaxMultiGPUSampler")
    first = comfy_server.run(prompt, timeout=RUN_TIMEOUT)
    _videos(comfy_server, first)
    second = comfy_server.run(tiny_prompt(seed=22, gpus=2), timeout=RUN_TIMEOUT)
    _videos(comfy_server, second)
    # the summary says where it ran, and that the second prompt found the group warm
    assert first[sampler][SUMMARY][-1] == f"{LAYOUT} · CPU · worker group started", first[sampler]
    assert second[sampler][SUMMARY][-1] == f"{LAYOUT} · CPU · warm worker group reused", second[sampler]
    log = comfy_server.log_text()
    assert len(GROUP_READY.findall(log)) == groups_before + 1, "the second prompt started another group"
    runs = SAMPLING.findall(log)
    assert len({group for _, group in runs[-2:]}) == 1, runs

    # a long run, cancelled once the workers are sampling
    started = len(runs)
    prompt_id = comfy_server.queue_prompt(tiny_prompt(seed=23, gpus=2, steps=1000))
    _wait_for_log(comfy_server, SAMPLING, started + 1, timeout=RUN_TIMEOUT)
    time.sleep(0.5)
    comfy_server.interrupt()
    with pytest.raises(PromptFailed) as failed:
        comfy_server.wait_for(prompt_id, timeout=RUN_TIMEOUT)
    assert failed.value.exception_type == "Interrupted"
    stopped = STOPPED.findall(comfy_server.log_text())
    assert stopped and int(stopped[-1]) < 1000, comfy_server.log_tail()  # the ranks stopped, not ran to the end

    # the server serves the next prompt, on the same group
    _videos(comfy_server, comfy_server.run(tiny_prompt(seed=24, gpus=2), timeout=RUN_TIMEOUT))
    log = comfy_server.log_text()
    assert len(GROUP_READY.findall(log)) == groups_before + 1, "the cancel cost the group"
    assert "Traceback" not in log.split("Multi-GPU Sampler: 1000 steps")[-1], comfy_server.log_tail()


def test_bad_prompts_are_node_errors_that_leave_the_warm_group_as_it_was(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    good = tiny_prompt(seed=31, gpus=2)
    _videos(comfy_server, comfy_server.run(good, timeout=RUN_TIMEOUT))
    pids = {rank: p.pid for rank, p in _ranks(comfy_server).items()}
    assert sorted(pids) == [0, 1]
    groups = len(GROUP_READY.findall(comfy_server.log_text()))
    bad = {
        "shift 0": (_sampler_inputs(good, shift=0.0), "shift"),  # below the widget's minimum: ComfyUI's validation
        "shift NaN": (_sampler_inputs(good, shift=math.nan), "shift must be a finite number > 0, got nan"),
        "two step caches": (
            _with_step_caches(good, teacache="wan2.1-t2v-14b", magcache="wan2.1-t2v-14b"),
            "a model takes one: remove one of the TeaCache and MagCache nodes",
        ),
        "step-cache coefficients for another model": (
            _with_step_caches(good, teacache="auto", magcache=None),
            "TeaCache has no published coefficients for a custom-d64-l2-h4 model",
        ),
        "a wrong text width": (
            _with_text_width(good, OTHER_TEXT_WIDTH),
            rf"the positive text embedding must be \[B, tokens, 768\], got \(1, \d+, {OTHER_TEXT_WIDTH}\)",
        ),
        "cfg_parallel with cfg 1": (
            _sampler_inputs(good, cfg=1.0, cfg_parallel=True),
            "cfg_parallel runs the positive and the negative branch on two halves of the GPUs, but cfg is 1",
        ),
    }
    for name, (prompt, words) in bad.items():
        message = _refusal(comfy_server, prompt)
        assert re.search(words, message), f"{name}: {message}"
        assert {rank: p.pid for rank, p in _ranks(comfy_server).items()} == pids, f"{name} touched the group"
    assert len(GROUP_READY.findall(comfy_server.log_text())) == groups, "a bad prompt started a group"
    _videos(comfy_server, comfy_server.run(tiny_prompt(seed=33, gpus=2), timeout=RUN_TIMEOUT))
    assert {rank: p.pid for rank, p in _ranks(comfy_server).items()} == pids  # and the same group serves on


def test_a_stopped_rank_and_a_cancel_end_the_prompt_within_2_s(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict], server_tmp: Path
) -> None:
    _videos(comfy_server, comfy_server.run(tiny_prompt(seed=41, gpus=2), timeout=RUN_TIMEOUT))  # a warm group
    ranks = _ranks(comfy_server)
    started = len(SAMPLING.findall(comfy_server.log_text()))
    prompt_id = comfy_server.queue_prompt(tiny_prompt(seed=42, gpus=2, steps=1000))
    _wait_for_log(comfy_server, SAMPLING, started + 1, timeout=RUN_TIMEOUT)  # the request went to the ranks
    ranks[1].send_signal(signal.SIGSTOP)
    cancelled = time.monotonic()
    comfy_server.interrupt()
    with pytest.raises(PromptFailed) as failed:
        comfy_server.wait_for(prompt_id, timeout=RUN_TIMEOUT, poll=0.02)
    took = time.monotonic() - cancelled
    assert failed.value.exception_type == "Interrupted"
    assert took <= CANCEL_BOUND_S, f"the prompt ended {took:.2f} s after the Cancel\n{comfy_server.log_tail()}"
    _wait_until_gone(list(ranks.values()))  # the stopped rank too
    assert not [p for p in server_tmp.iterdir() if p.name.startswith("dax-group-")]
    _videos(comfy_server, comfy_server.run(tiny_prompt(seed=43, gpus=2), timeout=RUN_TIMEOUT))  # a fresh group
    assert set(_ranks(comfy_server).values()).isdisjoint(ranks.values())


def test_a_stopped_rank_without_a_cancel_fails_the_prompt_naming_it(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    watched = _sampler_inputs(tiny_prompt(seed=51, gpus=2), hang_timeout=HANG_TIMEOUT_S)
    _videos(comfy_server, comfy_server.run(watched, timeout=RUN_TIMEOUT))
    ranks = _ranks(comfy_server)
    started = len(SAMPLING.findall(comfy_server.log_text()))
    long_run = _sampler_inputs(tiny_prompt(seed=52, gpus=2, steps=1000), hang_timeout=HANG_TIMEOUT_S)
    prompt_id = comfy_server.queue_prompt(long_run)
    _wait_for_log(comfy_server, SAMPLING, started + 1, timeout=RUN_TIMEOUT)
    ranks[1].send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    with pytest.raises(PromptFailed) as failed:
        comfy_server.wait_for(prompt_id, timeout=RUN_TIMEOUT, poll=0.1)
    took = time.monotonic() - stopped
    message = failed.value.exception_message
    assert failed.value.node_type == "DaxMultiGPUSampler" and failed.value.exception_type.endswith("WorkerGroupError")
    assert f"rank 1 (pid {ranks[1].pid} on" in message and "has sent nothing for" in message, message
    assert "it last said: sampling step" in message, message
    assert HANG_TIMEOUT_S <= took <= HANG_TIMEOUT_S + FAILURE_SLACK_S, took
    _wait_until_gone(list(ranks.values()))  # the next prompt starts a fresh group: the test below begins so


def test_unload_models_releases_the_group_which_listens_on_loopback_only_and_leaves_nothing(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict], server_tmp: Path
) -> None:
    _videos(comfy_server, comfy_server.run(tiny_prompt(seed=61, gpus=2), timeout=RUN_TIMEOUT))
    ranks = _ranks(comfy_server)
    listening = {r: [c.laddr.ip for c in p.net_connections("all") if c.status == "LISTEN"] for r, p in ranks.items()}
    assert all(listening.values()) and all(
        ipaddress.ip_address(ip).is_loopback for ips in listening.values() for ip in ips
    ), listening
    assert [p.name for p in server_tmp.iterdir() if p.name.startswith("dax-group-")] != []  # the running group's
    comfy_server._request("POST", "/free", {"unload_models": True})  # the editor's "Unload models" button
    _wait_until_gone(list(ranks.values()), within_s=30)
    assert not [p for p in server_tmp.iterdir() if p.name.startswith(("dax-group-", "torchelastic_"))]
    _videos(comfy_server, comfy_server.run(tiny_prompt(seed=62, gpus=2), timeout=RUN_TIMEOUT))  # started again
    assert set(_ranks(comfy_server).values()).isdisjoint(ranks.values())


def test_a_new_lora_strength_is_taken_by_the_running_worker_group(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    from dax_core.demo.run import shipped_workflows

    workflow = next(w for w in shipped_workflows() if "DaxLoadLora" in w.read_text())
    prompt = tiny_prompt(workflow=workflow, seed=71, gpus=2)
    for node in prompt.values():
        if node["class_type"] == "DaxCompile":
            node["inputs"]["backend"] = "eager"  # inductor's C++ build on every rank is not what this test is about
    groups_before = len(GROUP_READY.findall(comfy_server.log_text()))
    _videos(comfy_server, comfy_server.run(prompt, timeout=RUN_TIMEOUT))
    next(node for node in prompt.values() if node["class_type"] == "DaxLoadLora")["inputs"]["strength"] = 0.5
    start = len(comfy_server.log_text())
    _videos(comfy_server, comfy_server.run(prompt, timeout=RUN_TIMEOUT))
    log = comfy_server.log_text()
    assert len(GROUP_READY.findall(log)) == groups_before + 1, "the new strength started another group"
    assert re.search(r"worker group \w+: every rank took the new recipe", log[start:]), log[start:]
    assert log[start:].count("merged 1 LoRA(s) again") == 2, log[start:]  # each rank, in place
