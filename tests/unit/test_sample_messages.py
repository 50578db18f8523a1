"""Requests and results cross the control channel whole: every field, every tensor bit, the step-cache report."""

from __future__ import annotations

import socket

import torch

from dax_core.cache.base import BranchReport, StepCacheReport
from dax_core.runtime.engine import SampleRequest, SampleResult
from dax_core.runtime.sample_messages import request_fields, request_from_message, result_fields, result_from_message
from dax_core.runtime.wire import recv_message, send_message


def _through_a_socket(kind: str, fields: dict, tensors: dict):
    a, b = socket.socketpair()
    with a, b:
        send_message(a, kind, fields, tensors)
        return recv_message(b)


def test_request_round_trip():
    g = torch.Generator().manual_seed(0)
    req = SampleRequest(
        positive=torch.randn(1, 512, 64, generator=g).to(torch.bfloat16),
        negative=torch.randn(1, 300, 64, generator=g).to(torch.bfloat16),
        latent=torch.randn(1, 16, 3, 8, 8, generator=g),
        seed=2**63 + 5,
        steps=30,
        cfg=6.5,
        shift=5.0,
        sampler="uni_pc",
        scheduler="beta",
    )
    got = request_from_message(_through_a_socket("request", *request_fields(req)))
    for name in ("seed", "steps", "cfg", "shift", "sampler", "scheduler"):
        assert getattr(got, name) == getattr(req, name), name
    for name in ("positive", "negative", "latent"):
        assert (
            torch.equal(getattr(got, name), getattr(req, name)) and getattr(got, name).dtype == getattr(req, name).dtype
        )


def test_request_without_negative_round_trip():
    req = SampleRequest(torch.ones(1, 4, 8), None, torch.zeros(1, 16, 1, 4, 4), seed=0, steps=2, cfg=1.0)
    assert request_from_message(_through_a_socket("request", *request_fields(req))).negative is None


def test_result_round_trip_with_step_cache_report_and_notes():
    report = StepCacheReport("TeaCache", 5, (BranchReport("cond", "CCSCC"), BranchReport("uncond", "CCSSC")))
    notes = ("LoRA a.safetensors at strength 0.5: 3 parameters changed", "a second note")
    result = SampleResult(torch.randn(1, 16, 2, 4, 4), 5, 3.25, 1.5, report, notes)
    got = result_from_message(_through_a_socket("result", *result_fields(result)))
    assert torch.equal(got.latent, result.latent)
    assert (got.steps, got.seconds, got.first_step_seconds, got.step_cache) == (5, 3.25, 1.5, report)
    assert got.notes == notes and got.summary_lines()[-2:] == list(notes)
    assert got.summary_lines() == result.summary_lines()
