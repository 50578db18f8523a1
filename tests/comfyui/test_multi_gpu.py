"""The Multi-GPU Sampler with gpus = 2 through the real ComfyUI server (CPU workers, gloo): the group starts once
and serves the next prompt, a Cancel (POST /interrupt) stops the run and leaves the server and the group serving."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from dax_core.demo.comfy_server import ComfyServer, PromptFailed

pytestmark = pytest.mark.comfyui

RUN_TIMEOUT = 300.0
GROUP_READY = re.compile(r"worker group \w+: 2 ranks on cpu ready")
SAMPLING = re.compile(r"Multi-GPU Sampler: (\d+) steps on worker group (\w+)")
STOPPED = re.compile(r"worker group \w+: request \d+ (?:cancelled|stopped) after step (\d+)")


def _videos(server: ComfyServer, outputs: dict[str, Any]) -> list:
    videos = [p for p in server.output_files(outputs) if p.suffix == ".mp4"]
    assert len(videos) == 1 and videos[0].stat().st_size > 0, f"expected one saved video, got {outputs}"
    return videos


def _wait_for_log(server: ComfyServer, pattern: re.Pattern, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(pattern.findall(server.log_text())) < count:
        assert time.monotonic() < deadline, f"no {pattern.pattern!r} in the log\n{server.log_tail()}"
        time.sleep(0.1)


def test_two_prompts_share_one_worker_group_and_a_cancel_keeps_it(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    groups_before = len(GROUP_READY.findall(comfy_server.log_text()))
    _videos(comfy_server, comfy_server.run(tiny_prompt(seed=21, gpus=2), timeout=RUN_TIMEOUT))
    _videos(comfy_server, comfy_server.run(tiny_prompt(seed=22, gpus=2), timeout=RUN_TIMEOUT))
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


def test_a_new_lora_strength_is_taken_by_the_running_worker_group(
    comfy_server: ComfyServer, tiny_prompt: Callable[..., dict]
) -> None:
    from dax_core.demo.run import shipped_workflows

    workflow = next(w for w in shipped_workflows() if "DaxLoadLora" in w.read_text())
    prompt = tiny_prompt(workflow=workflow, seed=41, gpus=2)
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
